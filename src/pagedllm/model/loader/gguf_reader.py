"""A lean GGUF parser: metadata scalars and tensor locations, read through one mmap.

`gguf.GGUFReader` builds a numpy view for every string of the tokenizer's vocabulary, which
costs seconds per start for a 49k-token vocabulary. Loading weights needs only the header's
scalars and the tensor table, so this reader steps over long string arrays without decoding
them and leaves dequantization to `gguf.quants.dequantize`.

Layout (little-endian): magic "GGUF", u32 version, u64 tensor count, u64 key/value count,
the key/value pairs, one record per tensor (name, u32 n_dims, u64 dims innermost first, u32 type,
u64 offset), padding to `general.alignment`, then the tensor data.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
# Arrays longer than this (vocabularies, merges, scores) are stepped over, not kept.
_MAX_KEPT_ARRAY = 1024

_SCALARS = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True, slots=True)
class GGUFTensorInfo:
    """Where one tensor's bytes are; `shape` is in numpy (row-major, outermost first) order."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    offset: int  # absolute, from the start of the file
    nbytes: int

    @property
    def byte_shape(self) -> tuple[int, ...]:
        """Shape of the raw uint8 view `gguf.quants.dequantize` expects (rows, bytes per row)."""
        block_size, type_size = GGML_QUANT_SIZES[self.qtype]
        return (*self.shape[:-1], self.shape[-1] // block_size * type_size)


class GGUFFile:
    """An opened GGUF file: `metadata` (scalars and short arrays) and `tensors` in file order."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0
        self.metadata: dict[str, Any] = {}
        self.tensors: list[GGUFTensorInfo] = []
        self._parse()

    @property
    def architecture(self) -> str:
        return self.metadata["general.architecture"]

    def raw(self, info: GGUFTensorInfo) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 array of `info.byte_shape` (no copy)."""
        data = np.frombuffer(self._map, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        return data.reshape(info.byte_shape)

    def _parse(self) -> None:
        if self._map[:4] != _MAGIC:
            raise ValueError(f"{self.path} is not a GGUF file (bad magic)")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", self._map, 4)
        if version < 2:
            raise ValueError(f"{self.path}: GGUF version {version} is not supported (need 2 or later)")
        self._pos = 24
        for _ in range(n_kv):
            key = self._string()
            value = self._value(GGUFValueType(self._unpack("<I")))
            if value is not _SKIPPED:
                self.metadata[key] = value
        records = [self._tensor_record() for _ in range(n_tensors)]
        alignment = int(self.metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
        data_start = -(-self._pos // alignment) * alignment
        self.tensors = [self._tensor_info(data_start, *record) for record in records]

    def _unpack(self, fmt: str):
        (value,) = struct.unpack_from(fmt, self._map, self._pos)
        self._pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        length = self._unpack("<Q")
        text = self._map[self._pos : self._pos + length].decode("utf-8", errors="replace")
        self._pos += length
        return text

    def _value(self, vtype: GGUFValueType):
        if vtype == GGUFValueType.STRING:
            return self._string()
        if vtype == GGUFValueType.ARRAY:
            return self._array()
        return self._unpack(_SCALARS[vtype])

    def _array(self):
        etype = GGUFValueType(self._unpack("<I"))
        count = self._unpack("<Q")
        if etype in _SCALARS:
            dtype = np.dtype(_SCALARS[etype])
            values = np.frombuffer(self._map, dtype=dtype, count=count, offset=self._pos)
            self._pos += count * dtype.itemsize
            return values.tolist() if count <= _MAX_KEPT_ARRAY else _SKIPPED
        if count <= _MAX_KEPT_ARRAY:
            return [self._value(etype) for _ in range(count)]
        self._skip_values(etype, count)
        return _SKIPPED

    def _skip_values(self, etype: GGUFValueType, count: int) -> None:
        if etype == GGUFValueType.STRING:
            for _ in range(count):
                self._pos += 8 + struct.unpack_from("<Q", self._map, self._pos)[0]
        else:  # nested arrays: rare, walk them the slow way
            for _ in range(count):
                self._value(etype)

    def _tensor_record(self) -> tuple[str, tuple[int, ...], int, int]:
        name = self._string()
        n_dims = self._unpack("<I")
        dims = struct.unpack_from(f"<{n_dims}Q", self._map, self._pos)
        self._pos += 8 * n_dims
        qtype = self._unpack("<I")
        offset = self._unpack("<Q")
        return name, dims, qtype, offset

    def _tensor_info(self, data_start: int, name: str, dims, qtype: int, offset: int) -> GGUFTensorInfo:
        qtype = GGMLQuantizationType(qtype)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        n_elements = int(np.prod(dims)) if dims else 1
        shape = tuple(int(d) for d in reversed(dims))  # GGUF lists the fastest-varying dim first
        return GGUFTensorInfo(name, shape, qtype, data_start + offset, n_elements // block_size * type_size)


class _Skipped:
    """Marks a metadata array that was stepped over."""


_SKIPPED = _Skipped()
