"""The DICOM value rules the node checks its own values against (PS3.5 Table 6.2-1).

One place for the AE, CS, LO and IS rules: the settings (an AE title, a modality, a series
description, a series number) and the result options take them from here. Each check
returns the value (stripped where the VR's spaces are not significant) or raises
``ValueError`` saying which rule it breaks. Framework-free: standard library only.
"""

AE_MAX = 16
"""An Application Entity (AE) value has at most 16 characters."""
CS_MAX = 16
"""A Code String (CS) value has at most 16 characters."""
LO_MAX = 64
"""A Long String (LO) value has at most 64 characters."""
IS_MIN = -(2**31)
"""The smallest Integer String (IS) value."""
IS_MAX = 2**31 - 1
"""The largest Integer String (IS) value."""

_ESC = "\x1b"
_CS_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _")


def check_ae_title(value: str) -> str:
    """``value`` stripped, if it is a valid AE title, else ``ValueError``.

    1 to 16 characters of the default repertoire, no backslash and no control
    character; leading and trailing spaces are not significant.
    """
    stripped = value.strip(" ")
    if not 1 <= len(stripped) <= AE_MAX:
        raise ValueError(f"an AE title has 1 to {AE_MAX} characters, got {len(stripped)}")
    bad = [ch for ch in stripped if ch == "\\" or not 0x20 <= ord(ch) < 0x7F]
    if bad:
        raise ValueError(
            f"an AE title may not contain {bad[0]!r} (backslash, control or non-ASCII)"
        )
    return stripped


def check_code_string(value: str) -> str:
    """``value`` stripped, if it is a valid CS value (e.g. a Modality), else ``ValueError``.

    1 to 16 upper-case letters, digits, spaces and underscores; leading and trailing
    spaces are not significant.
    """
    stripped = value.strip(" ")
    if not 1 <= len(stripped) <= CS_MAX or not set(stripped) <= _CS_CHARACTERS:
        raise ValueError(
            f"must be a DICOM CS value: 1 to {CS_MAX} upper-case letters, digits, spaces "
            f"or underscores, got {value!r}"
        )
    return stripped


def check_long_string(value: str) -> str:
    """``value`` if it is a valid LO value, else ``ValueError``.

    At most 64 characters, no backslash (the value delimiter) and no control
    character but ESC (which starts a character set's escape sequence).
    """
    controls = [ch for ch in value if ord(ch) < 0x20 and ch != _ESC]
    if len(value) > LO_MAX or "\\" in value or controls:
        raise ValueError(
            f"must be a DICOM LO value (at most {LO_MAX} characters, no backslash, "
            f"no control character), got {value!r}"
        )
    return value


def check_integer_string(value: int) -> int:
    """``value`` if an IS element can hold it, else ``ValueError``."""
    if not IS_MIN <= value <= IS_MAX:
        raise ValueError(f"must be a DICOM IS value ({IS_MIN} to {IS_MAX}), got {value}")
    return value
