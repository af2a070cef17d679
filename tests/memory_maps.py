"""This process's memory mappings as Linux reports them (/proc/self/smaps)."""

from __future__ import annotations


def vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds `address` ("hg": advised
    MADV_HUGEPAGE)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(part, 16) for part in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")
