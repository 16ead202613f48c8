"""OpenSSF model-signing interop: vendor signatures checked on import, ``model.sig`` written on restore.

Owns: the vendor trust (``vendors``), verifying a directory's ``model.sig`` with the
``model_signing`` library into a ``Provenance`` record (``verify``), and writing a
``model.sig`` over a restored directory with an ECDSA P-256 key (``sign``). Layer: beside
``appliance.sources`` (an import/export edge), torch-free; the library is the optional extra
``appliance[model-signing]`` and is imported only when a signature is checked or written.
"""

from appliance.format.provenance import MODEL_SIG
from appliance.provenance.sign import SignedDirectory, sign_directory
from appliance.provenance.vendors import Vendor, VendorTrust, load_vendors, save_vendors, vendors_path
from appliance.provenance.verify import check_source, library, signed_file_digests, verify_directory

__all__ = [
    "MODEL_SIG",
    "SignedDirectory",
    "Vendor",
    "VendorTrust",
    "check_source",
    "library",
    "load_vendors",
    "save_vendors",
    "sign_directory",
    "signed_file_digests",
    "vendors_path",
    "verify_directory",
]
