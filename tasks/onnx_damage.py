"""Why bytes are not a readable ONNX model: empty, another format, cut short or damaged.

Reads the top-level protobuf records of an ONNX ModelProto by hand, since protobuf itself only says
that parsing failed.
"""

from __future__ import annotations

# ModelProto's top-level fields: number -> (name, protobuf wire type: 0 varint, 2 length-delimited).
MODEL_PROTO_FIELDS = {1: ("ir_version", 0), 2: ("producer_name", 2), 3: ("producer_version", 2), 4: ("domain", 2),
                      5: ("model_version", 0), 6: ("doc_string", 2), 7: ("graph", 2), 8: ("opset_import", 2),
                      14: ("metadata_props", 2), 20: ("training_info", 2), 25: ("functions", 2),
                      26: ("configuration", 2)}


def read_varint(data: bytes, offset: int) -> tuple[int, int]:
    """(value, next offset) of the protobuf varint at `offset`; IndexError when the data ends inside it."""
    value, shift = 0, 0
    while True:
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        offset, shift = offset + 1, shift + 7
        if not byte & 0x80:
            return value, offset


def explain_unreadable_onnx(data: bytes) -> str:
    """Say why bytes that protobuf refused are no ONNX model: empty, another format, or cut short.

    Walks the top-level records of an ONNX ModelProto: a file that starts like one but whose last
    record runs past its end was truncated (an interrupted copy or download).
    """
    if not data:
        return "the file is empty (0 bytes); copy it again or re-export it"
    offset, records = 0, 0
    while offset < len(data):
        start = offset
        try:
            tag, offset = read_varint(data, offset)
            name, wire_type = MODEL_PROTO_FIELDS.get(tag >> 3, ("", -1))
            if wire_type != tag & 7:
                break
            length, offset = read_varint(data, offset)
        except IndexError:
            return (f"it is truncated: it ends inside a record header at byte {start} of {len(data)}; "
                    "copy it again or re-export it")
        if wire_type == 2:
            if offset + length > len(data):
                return (f"it is truncated: its {name} record at byte {start} needs {length} bytes but the file ends "
                        f"{len(data) - offset} bytes later ({len(data)} bytes in all); copy it again or re-export it")
            offset += length
        records += 1
    if records == 0:
        return (f"it is not an ONNX model (it starts with {data[:8]!r}); a .dfm is an ONNX file, as DeepFaceLab or "
                "`faceflow stage export` write it")
    return (f"it is damaged after byte {start} of {len(data)}: the bytes there are no ONNX record; "
            "copy it again or re-export it")
