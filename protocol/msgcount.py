# Counting the values of a msgpack object before decoding it, so that a decoder can refuse bytes that
# would turn into too many Python objects: one byte of msgpack (an empty array or map) becomes an object of
# 56-64 bytes, so a 1 MiB message of empty containers would otherwise cost about 70 MiB to decode.
# Pure: bytes in, a count out; it builds no objects.
from __future__ import annotations

# bytes that follow the type byte of a fixed-size value
_FIXED_SIZE = {
    0xCA: 4, 0xCB: 8,  # float 32, 64
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,  # uint 8-64
    0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,  # int 8-64
    0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,  # fixext 1-16: type byte + data
}
# width of the length that follows the type byte of a variable-size value
_LENGTH_WIDTH = {
    0xC4: 1, 0xC5: 2, 0xC6: 4,  # bin 8-32
    0xC7: 1, 0xC8: 2, 0xC9: 4,  # ext 8-32 (a type byte follows the length)
    0xD9: 1, 0xDA: 2, 0xDB: 4,  # str 8-32
    0xDC: 2, 0xDD: 4,  # array 16, 32
    0xDE: 2, 0xDF: 4,  # map 16, 32
}


def within_value_count(data: bytes, limit: int) -> bool:
    """True when the first msgpack object in `data` consists of at most `limit` values, counting the
    object itself, every container in it and every element, map key and map value. Truncated or malformed
    bytes are not judged here (True): the decoder rejects them. Reads at most `limit` type bytes."""
    pos, end = 0, len(data)
    pending = 1  # values still to read
    count = 0
    while pending:
        if pos >= end:
            return True
        count += 1
        if count > limit:
            return False
        pending -= 1
        byte = data[pos]
        pos += 1
        if byte <= 0x7F or byte >= 0xE0 or 0xC0 <= byte <= 0xC3:  # fixint, nil, (unused), bool
            continue
        if byte <= 0x8F:  # fixmap
            pending += 2 * (byte & 0x0F)
        elif byte <= 0x9F:  # fixarray
            pending += byte & 0x0F
        elif byte <= 0xBF:  # fixstr
            pos += byte & 0x1F
        elif byte in _FIXED_SIZE:
            pos += _FIXED_SIZE[byte]
        else:
            width = _LENGTH_WIDTH[byte]
            length = int.from_bytes(data[pos:pos + width], "big")
            pos += width
            if byte in (0xDC, 0xDD):
                pending += length
            elif byte in (0xDE, 0xDF):
                pending += 2 * length
            else:
                pos += length + (1 if byte in (0xC7, 0xC8, 0xC9) else 0)
    return True
