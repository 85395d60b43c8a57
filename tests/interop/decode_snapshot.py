"""Decodes a snapshot (binary protobuf, as Sonde's agent sends it) with Deep's own `deep-proto`
package and prints a JSON summary: the top frame's variable names, each top variable's type and
children's names, and every frame's method, file and line.

Used by tests/agent_snapshots_hold_no_secrets.rs:  python decode_snapshot.py SNAPSHOT.bin
"""

import json
import sys

from deepproto.proto.tracepoint.v1.tracepoint_pb2 import Snapshot


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        snap = Snapshot()
        snap.ParseFromString(f.read())
    top = snap.frames[0].variables if snap.frames else []
    lookup = snap.var_lookup
    print(json.dumps({
        "tracepoint": snap.tracepoint.ID,
        "top": [v.name for v in top],
        "types": {v.name: lookup[v.ID].type for v in top},
        "children": {v.name: [c.name for c in lookup[v.ID].children] for v in top},
        "frames": [
            {"method_name": fr.method_name, "file_name": fr.file_name, "line_number": fr.line_number}
            for fr in snap.frames
        ],
    }))


if __name__ == "__main__":
    main()
