//! The central side for the hub tests: a real S3 server (SeaweedFS, `weed server -s3`, installed
//! by `scripts/object-store.sh`) with a bucket, and `eddy-hub` processes in front of it, each
//! killed when dropped. Plus reading the bucket back as a user would: object_store and Parquet.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};

pub const BUCKET: &str = "eddy";
pub const ACCESS_KEY: &str = "eddy-test";
pub const SECRET_KEY: &str = "eddy-test-secret";

use crate::support::free_port;

/// The `weed` binary: `EDDY_WEED`, else the venv `scripts/object-store.sh` fills.
pub fn weed() -> PathBuf {
    let p = std::env::var_os("EDDY_WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/weed"));
    assert!(p.exists(), "SeaweedFS's weed is not at {} (run scripts/object-store.sh)", p.display());
    p
}

/// The venv's Python, with DuckDB (`scripts/object-store.sh`).
pub fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(p.exists(), "no venv Python at {} (run scripts/object-store.sh)", p.display());
    p
}

/// The eddy-hub binary, built beside eddyd (scripts/test.sh builds it first).
pub fn hub_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_eddyd")).with_file_name("eddy-hub");
    assert!(p.exists(), "{} not built (cargo build --release --bin eddy-hub)", p.display());
    p
}

pub fn eddyctl_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_eddyd")).with_file_name("eddyctl");
    assert!(p.exists(), "{} not built (cargo build --release --bin eddyctl)", p.display());
    p
}

/// One SeaweedFS server (master, volume, filer and S3 gateway) on loopback ports.
pub struct S3Server {
    child: Option<Child>,
    dir: PathBuf,
    /// master, master gRPC, volume, volume gRPC, filer, filer gRPC, S3, S3 gRPC: every port
    /// given (SeaweedFS's defaults add 10000 to a port, which may not be free or valid).
    ports: [u16; 8],
}

impl S3Server {
    pub fn start(dir: &Path) -> S3Server {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let identities = format!(
            r#"{{"identities":[{{"name":"eddy","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        std::fs::write(dir.join("s3.json"), identities).unwrap();
        let mut s = S3Server { child: None, dir: dir.to_path_buf(), ports: [0; 8].map(|_| free_port()) };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc] = self.ports;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("weed.log")).unwrap();
        let child = Command::new(weed())
            .args([
                "server",
                &format!("-dir={}", self.dir.join("data").display()),
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                &format!("-master.port={master}"),
                &format!("-master.port.grpc={master_grpc}"),
                &format!("-volume.port={volume}"),
                &format!("-volume.port.grpc={volume_grpc}"),
                &format!("-filer.port={filer}"),
                &format!("-filer.port.grpc={filer_grpc}"),
                "-s3",
                &format!("-s3.port={s3}"),
                &format!("-s3.port.grpc={s3_grpc}"),
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                &format!("-s3.config={}", self.dir.join("s3.json").display()),
                "-volume.max=8",
                "-master.volumeSizeLimitMB=64",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weed");
        self.child = Some(child);
        // Ready when a PUT succeeds: the first one also creates the bucket (an admin identity's
        // PUT does, in SeaweedFS). The probe object is removed again.
        let store = self.store();
        let rt = runtime();
        let probe = object_store::path::Path::from("ready-probe");
        let t0 = Instant::now();
        let mut last = String::new();
        while t0.elapsed() < Duration::from_secs(60) {
            match rt.block_on(store.put(&probe, object_store::PutPayload::from_static(b"up"))) {
                Ok(_) => {
                    rt.block_on(store.delete(&probe)).unwrap();
                    return;
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default();
        // glog's fatal lines ("F1202 …") say why; the tail is mostly the stack that follows.
        let fatal: Vec<&str> =
            log.lines().filter(|l| l.starts_with('F') && l[1..].starts_with(|c: char| c.is_ascii_digit())).collect();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        panic!(
            "SeaweedFS did not come up ({last}); fatal: {fatal:?}; its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[6])
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server and starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A client of the bucket.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(BUCKET)
                .with_endpoint(self.endpoint())
                .with_region("us-east-1")
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .with_allow_http(true)
                .build()
                .unwrap(),
        )
    }

    /// The keys under `prefix` (one LIST, no GETs).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let store = self.store();
        runtime().block_on(async {
            use futures::TryStreamExt;
            let p = object_store::path::Path::from(prefix);
            let metas: Vec<_> = store.list(Some(&p)).try_collect().await.unwrap();
            let mut keys: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
            keys.sort();
            keys
        })
    }

    /// Every object's key and bytes. An object deleted between the listing and its read (by a
    /// hub sweeping beside the test) is not there any more, and is left out.
    pub fn objects(&self) -> Vec<(String, bytes::Bytes)> {
        let store = self.store();
        runtime().block_on(async {
            use futures::TryStreamExt;
            let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
            let mut out = Vec::new();
            for m in metas {
                match store.get(&m.location).await {
                    Ok(got) => out.push((m.location.to_string(), got.bytes().await.unwrap())),
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => panic!("reading {}: {e}", m.location),
                }
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        })
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// An `eddy-hub` process on a fixed loopback port (so it can be restarted where gateways expect
/// it), killed when dropped.
pub struct HubProcess {
    child: Option<Child>,
    pub addr: String,
    pub config: PathBuf,
}

impl HubProcess {
    /// Writes `<name>.toml` in `dir` for a hub in front of `s3`, with the TLS files of `tls_dir`
    /// (`hub.pem`, `hub.key`, and the gateways' CA `fleet-ca.pem`), and starts it.
    pub fn start(dir: &Path, name: &str, s3: &S3Server, tls_dir: &Path) -> HubProcess {
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = '{addr}'\n[tls]\ncert = '{tls}/hub.pem'\nkey = '{tls}/hub.key'\nclient_ca = '{tls}/fleet-ca.pem'\n\
                 [store]\nurl = 's3://{BUCKET}'\nendpoint = '{}'\nregion = 'us-east-1'\nallow_http = true\n\
                 [access]\noperators = ['ops']\n[fleet]\npoll_ms = 200\n",
                s3.endpoint(),
                tls = tls_dir.display()
            ),
        )
        .unwrap();
        let mut h = HubProcess { child: None, addr, config };
        h.spawn();
        h
    }

    fn spawn(&mut self) {
        use std::io::BufRead;
        let mut child = Command::new(hub_binary())
            .arg("--config")
            .arg(&self.config)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("EDDY_HUB_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start eddy-hub");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("eddy-hub listening on"), "eddy-hub did not start: {line:?}");
        self.child = Some(child);
    }

    /// SIGKILL: whatever it was doing is cut off.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
