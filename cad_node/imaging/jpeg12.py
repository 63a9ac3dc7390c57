"""A pydicom decoder plug-in for JPEG Extended (Process 2 & 4) with 12-bit samples, by GDCM.

pydicom 3.0's GDCM plug-in refuses *JPEG Extended* when Bits Stored is not 8, Pillow
decodes 8-bit JPEG only, and the one other decoder of 12-bit JPEG (pylibjpeg-libjpeg)
is GPL-3.0. python-gdcm 3.2 decodes these frames correctly (its 8-bit codec fails first
and it retries with its 12-bit one, printing "Unsupported JPEG data precision 12" to
stderr on the way), so this module gives pydicom the same GDCM call without the guard.
Process 4 is the default transfer syntax for lossy 12-bit images (PS3.5 A.4.1), the
one CT and MR scanners use when they compress lossily.
"""

import contextlib

from pydicom import uid
from pydicom.pixels.decoders.base import DecodeRunner, JPEGExtended12BitDecoder

try:
    import gdcm

    HAVE_GDCM = True
except ImportError:  # python-gdcm is a dependency; without it the plug-in is unavailable
    HAVE_GDCM = False

PLUGIN_LABEL = "gdcm-12bit"

DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("gdcm>=3.0.10",)}


def is_available(transfer_syntax_uid: str) -> bool:
    """Whether this plug-in can decode ``transfer_syntax_uid`` (pydicom's plug-in API)."""
    return HAVE_GDCM and transfer_syntax_uid in DECODER_DEPENDENCIES


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One decoded frame of JPEG Extended ``src``, as pydicom's decoders return it."""
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())

    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    kind = gdcm.PhotometricInterpretation.GetPIType(runner.photometric_interpretation)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(kind))
    if runner.samples_per_pixel > 1:
        image.SetPlanarConfiguration(runner.planar_configuration)
    syntax = gdcm.TransferSyntax.GetTSType(str(runner.transfer_syntax))
    image.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    image.SetPixelFormat(
        gdcm.PixelFormat(
            runner.samples_per_pixel,
            runner.bits_allocated,
            runner.bits_stored,
            runner.bits_stored - 1,
            runner.pixel_representation,
        )
    )
    # GDCM hands the buffer back as a str of surrogate-escaped bytes
    return bytes(image.GetBuffer().encode("utf-8", "surrogateescape"))


def register() -> None:
    """Add the plug-in to pydicom's JPEG Extended decoder, once per process."""
    with contextlib.suppress(ValueError):  # pydicom's word for "already added"
        JPEGExtended12BitDecoder.add_plugin(PLUGIN_LABEL, (__name__, "decode_frame"))
