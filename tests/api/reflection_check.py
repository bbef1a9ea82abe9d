"""Lists eddyd's gRPC services through server reflection with a generic client that knows
nothing of eddy.v1 (grpcio-reflection, as grpcurl does), then reads a method's descriptor.

Usage: python3 tests/api/reflection_check.py target/release/eddyd
"""

import os
import subprocess
import sys
import tempfile
import time

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> int:
    eddyd = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        sock = os.path.join(d, "ctl.sock")
        with open(os.path.join(d, "eddyd.toml"), "w") as f:
            f.write(f'state_dir = "state"\n[encryption]\nenabled = false\n[api]\nsocket = "{sock}"\n')
        log = open(os.path.join(d, "eddyd.log"), "w")
        p = subprocess.Popen([eddyd, "run", "--config", "eddyd.toml"], cwd=d, stderr=log)
        try:
            deadline = time.time() + 30
            while not os.path.exists(sock) and time.time() < deadline:
                time.sleep(0.1)
            # gRPC's default authority for a Unix socket is its path, which HTTP/2 servers
            # (hyper) refuse as an :authority; any host name does.
            channel = grpc.insecure_channel(f"unix:{sock}", options=[("grpc.default_authority", "localhost")])
            grpc.channel_ready_future(channel).result(timeout=30)
            db = ProtoReflectionDescriptorDatabase(channel)
            services = set(db.get_services())
            want = {"eddy.v1.Control", "grpc.health.v1.Health"}
            missing = want - services
            if missing:
                print(f"reflection: missing {sorted(missing)} in {sorted(services)}", file=sys.stderr)
                return 1
            if "eddy.v1.Hub" in services:
                print("reflection: eddyd advertises eddy.v1.Hub, which only eddy-hub serves", file=sys.stderr)
                return 1
            control = DescriptorPool(db).FindServiceByName("eddy.v1.Control")
            methods = {m.name for m in control.methods}
            for m in ("Status", "Deploy", "Tap", "ReadAudit"):
                if m not in methods:
                    print(f"reflection: eddy.v1.Control has no {m}: {sorted(methods)}", file=sys.stderr)
                    return 1
            print(f"reflection: {len(services)} services, eddy.v1.Control with {len(methods)} methods: OK")
            return 0
        finally:
            p.terminate()
            p.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
