"""Files → xz-compressed tar parts small enough for one transfer each, with a SHA256 list; and back, every part
checked first. This is how a GPU box with no network gets its wheels: the parts travel one or two per call.
Standard library only: the box unpacks them before anything is installed."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

SUMS_FILE = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` checks the parts too
INDEX_FILE = "packs.json"
MIB = 1 << 20
# x86 BCJ + LZMA2 at its strongest: the CUDA provider library (284 MB) is most of the payload and BCJ helps machine code.
FILTERS = {"x86": [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}],
           "plain": [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}],
           "fast": [{"id": lzma.FILTER_LZMA2, "preset": 1}]}  # for data xz cannot shrink (a Q4_1 GGUF: 89 MiB → 88.7 at -9e)


class PackError(Exception):
    """A pack is incomplete or corrupt, or a part's checksum does not match (main()s turn it into a message)."""


@dataclass
class Pack:
    """One named pack: its parts on disk and what they hold (arcname → bytes, sha256)."""

    name: str
    parts: list[str] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)
    packed_bytes: int = 0
    unpacked_bytes: int = 0
    optional: bool = False
    note: str = ""


def sha256_of(path: Path, chunk: int = 8 * MIB) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _PartWriter(io.RawIOBase):
    """A write-only stream that xz-compresses what it gets and cuts the result into files of at most `part_bytes`."""

    def __init__(self, folder: Path, stem: str, part_bytes: int, filters: list[dict]) -> None:
        self.folder, self.stem, self.part_bytes = folder, stem, part_bytes
        self.compressor = lzma.LZMACompressor(format=lzma.FORMAT_XZ, filters=filters)
        self.parts: list[Path] = []
        self._file = None
        self._used = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._emit(self.compressor.compress(bytes(data)))
        return len(data)

    def finish(self) -> list[Path]:
        self._emit(self.compressor.flush())
        if self._file:
            self._file.close()
        return self.parts

    def _emit(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._file is None or self._used == self.part_bytes:
                if self._file:
                    self._file.close()
                self.parts.append(self.folder / f"{self.stem}.tar.xz.part{len(self.parts):02d}")
                self._file, self._used = open(self.parts[-1], "wb"), 0
            take = min(len(view), self.part_bytes - self._used)
            self._file.write(view[:take])
            self._used += take
            view = view[take:]


def pack(files: dict[str, Path], folder: Path, name: str, part_bytes: int = 60 * MIB, filters: str = "x86") -> Pack:
    """Tar `files` (arcname → path; a folder is added with its contents), xz-compress, cut into parts in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{name}.tar.xz.part*"):
        stale.unlink()
    writer = _PartWriter(folder, name, part_bytes, FILTERS[filters])
    result = Pack(name)
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for arcname, path in sorted(files.items()):
            tar.add(str(path), arcname=arcname)
            for member in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
                inner = arcname if member == path else f"{arcname}/{member.relative_to(path).as_posix()}"
                result.files[inner] = {"bytes": member.stat().st_size, "sha256": sha256_of(member)}
    result.parts = [p.name for p in writer.finish()]
    result.packed_bytes = sum((folder / p).stat().st_size for p in result.parts)
    result.unpacked_bytes = sum(f["bytes"] for f in result.files.values())
    return result


def resplit(folder: Path, pack_: Pack, part_bytes: int) -> Pack:
    """Cut an existing pack's byte stream into parts of another size (no recompression: xz -9e of the 280 MB ORT
    provider takes minutes); the caller rewrites the index."""
    stem = f"{pack_.name}.tar.xz.part"
    staging = folder / f".resplit-{pack_.name}"
    staging.mkdir(exist_ok=True)
    new_parts: list[str] = []
    out, used = None, 0
    for part in pack_.parts:
        with open(folder / part, "rb") as f:
            while block := f.read(min(part_bytes, 8 * MIB)):
                view = memoryview(block)
                while view:
                    if out is None or used == part_bytes:
                        if out:
                            out.close()
                        new_parts.append(f"{stem}{len(new_parts):02d}")
                        out, used = open(staging / new_parts[-1], "wb"), 0
                    take = min(len(view), part_bytes - used)
                    out.write(view[:take])
                    used += take
                    view = view[take:]
    if out:
        out.close()
    for part in pack_.parts:
        (folder / part).unlink()
    for part in new_parts:
        (staging / part).rename(folder / part)
    staging.rmdir()
    pack_.parts = new_parts
    return pack_


def write_index(folder: Path, packs: list[Pack], extra: dict | None = None) -> None:
    """packs.json (what each pack holds) and SHA256SUMS (every part, in `sha256sum -c` format)."""
    doc = {"packs": {p.name: p.__dict__ for p in packs}, **(extra or {})}
    (folder / INDEX_FILE).write_text(json.dumps(doc, indent=1))
    lines = [f"{sha256_of(folder / part)}  {part}" for p in packs for part in p.parts]
    (folder / SUMS_FILE).write_text("\n".join(lines) + "\n")


def read_index(folder: Path) -> tuple[dict[str, Pack], dict]:
    """The packs described in `folder` (empty when it holds loose files only) and the index's other fields."""
    index = folder / INDEX_FILE
    if not index.is_file():
        return {}, {}
    doc = json.loads(index.read_text())
    packs = {name: Pack(**fields) for name, fields in doc.pop("packs").items()}
    return packs, doc


def missing_parts(folder: Path, pack_: Pack) -> list[str]:
    return [part for part in pack_.parts if not (folder / part).is_file()]


def unpack(folder: Path, pack_: Pack, dest: Path) -> list[Path]:
    """Check every part of `pack_` against SHA256SUMS, then stream them through xz and tar into `dest`."""
    missing = missing_parts(folder, pack_)
    if missing:
        raise PackError(f"pack {pack_.name!r} is incomplete: {len(missing)} of {len(pack_.parts)} parts missing in {folder} ({', '.join(missing)})")
    sums = dict(reversed(line.split(None, 1)) for line in (folder / SUMS_FILE).read_text().splitlines() if line.strip())
    for part in pack_.parts:
        expected, actual = sums.get(part), sha256_of(folder / part)
        if expected != actual:
            raise PackError(f"part {part} is corrupt: sha256 {actual} but SHA256SUMS says {expected}; transfer it again")
    dest.mkdir(parents=True, exist_ok=True)
    reader = io.BufferedReader(_JoinedXz([folder / p for p in pack_.parts]), buffer_size=8 * MIB)
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python without extraction filters: the names were checked when packing
            tar.extractall(dest)
    return [dest / name for name in pack_.files]


class _JoinedXz(io.RawIOBase):
    """The parts read back to back and decompressed, as one readable stream."""

    def __init__(self, parts: list[Path]) -> None:
        self.parts, self.decompressor, self._file, self._pending = list(parts), lzma.LZMADecompressor(format=lzma.FORMAT_XZ), None, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = self._next_chunk()
            if chunk is None:
                return 0
            self._pending = self.decompressor.decompress(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _next_chunk(self) -> bytes | None:
        while True:
            if self._file is None:
                if not self.parts:
                    return None
                self._file = open(self.parts.pop(0), "rb")
            chunk = self._file.read(4 * MIB)
            if chunk:
                return chunk
            self._file.close()
            self._file = None
