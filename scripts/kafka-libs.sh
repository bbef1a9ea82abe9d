#!/usr/bin/env bash
# Fetches the Apache Kafka broker's jars (pinned in tests/kafka/pom.xml) into target/kafka-libs,
# once: the Kafka tests start a broker from them with `java -cp 'target/kafka-libs/*' kafka.Kafka`.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/kafka-libs
if [ -f "$dest/.complete" ] && [ "$dest/.complete" -nt tests/kafka/pom.xml ]; then
    exit 0
fi
command -v mvn >/dev/null || { echo "kafka-libs: Maven (mvn) is needed to fetch the Kafka broker" >&2; exit 1; }
command -v java >/dev/null || { echo "kafka-libs: Java 17+ is needed to run the Kafka broker" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$dest"
mvn -q -B -f tests/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory="$PWD/$dest"
touch "$dest/.complete"
echo "kafka-libs: $(ls "$dest"/*.jar | wc -l) jars in $dest"
