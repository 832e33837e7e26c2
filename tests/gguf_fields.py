"""Reading GGUF metadata with gguf-py in the tests: `field(reader, key)` is a key's value, or None."""

from gguf import GGUFReader


def field(reader: GGUFReader, key: str):
    f = reader.get_field(key)
    return None if f is None else f.contents()
