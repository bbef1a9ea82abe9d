SUMMARY = "Streaming SQL for edge gateways"
DESCRIPTION = "eddyd runs continuous SQL pipelines (windows, aggregates, joins, \
               patterns) over MQTT and Kafka streams, with encrypted state that survives \
               power cuts; eddyctl manages it over gRPC."
SECTION = "net"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=22a53954e4e0ec258dfce4391e905dac"

# librdkafka (built from the rdkafka crate's sources) links zlib.
DEPENDS += "zlib"

PV = "0.1.0+git"

# The repository this layer lives in (conf/layer.conf), or a clone named in local.conf.
EDDY_GIT_URI ??= "git://${EDDY_REPO_DIR};protocol=file"
EDDY_GIT_BRANCH ??= "main"
SRC_URI = "${EDDY_GIT_URI};branch=${EDDY_GIT_BRANCH};destsuffix=git"
# The layer builds the tree it ships in; a release pins SRCREV (and EDDY_GIT_URI) in its kas file.
# nooelint: oelint.vars.autorev
SRCREV ?= "${AUTOREV}"
S = "${UNPACKDIR}/git"

inherit cargo cargo-update-recipe-crates systemd features_check

REQUIRED_DISTRO_FEATURES = "systemd"

# Every crate of Cargo.lock, with its checksum; regenerate with scripts/yocto-crates.py (or
# `bitbake -c update_crates eddy`) whenever Cargo.lock changes. A test keeps the two equal.
require ${BPN}-crates.inc

# Optional connector features. kafka-tls: TLS and SASL for Kafka (OpenSSL, Cyrus SASL).
PACKAGECONFIG ??= ""
PACKAGECONFIG[kafka-tls] = "--features eddyd/kafka-tls,,openssl cyrus-sasl"

# The daemon and the CLI only (the workspace also holds the benchmarks).
CARGO_BUILD_FLAGS:append = " --bin eddyd --bin eddyctl ${PACKAGECONFIG_CONFARGS}"

do_install() {
    install -d ${D}${bindir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/eddyd ${D}${bindir}/eddyd
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/eddyctl ${D}${bindir}/eddyctl
    # The unit, the config and the key helper from the repository (systemd/, packaging/).
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/eddyd.service ${D}${systemd_system_unitdir}/eddyd.service
    install -d ${D}${sysconfdir}/eddy/pipelines
    install -m 0644 ${S}/packaging/eddyd.toml ${D}${sysconfdir}/eddy/eddyd.toml
    install -d ${D}${nonarch_libdir}/eddy
    install -m 0755 ${S}/packaging/make-state-key ${D}${nonarch_libdir}/eddy/make-state-key
}

SYSTEMD_SERVICE:${PN} = "eddyd.service"
SYSTEMD_AUTO_ENABLE = "enable"
CONFFILES:${PN} = "${sysconfdir}/eddy/eddyd.toml"
FILES:${PN} += "${nonarch_libdir}/eddy"
RDEPENDS:${PN} += "systemd"

# The state key is made on the device at first boot (host-bound: never in the image).
pkg_postinst_ontarget:${PN}() {
    ${nonarch_libdir}/eddy/make-state-key ${sysconfdir}/eddy/state-key.cred
}
