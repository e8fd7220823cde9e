"""C2PA manifests on renders: signed with a project-local identity, read back with their validation.

The identity is made on first use under ``.faceflow/provenance/`` of the project: a self-made CA
certificate (its key is thrown away once it has signed) and an ES256 end-entity certificate and
key (mode 0600) that sign every render. Nobody outside the project trusts that CA, so a reader
elsewhere reports the signature as intact but the signer as untrusted; inside the project,
``ca.pem`` is passed as a trust anchor and the signer is reported as trusted. The folder is
git-ignored (``.faceflow/`` in the project's .gitignore, and a ``.gitignore`` of its own): never
commit or share ``signer.key``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

PROVENANCE_DIR = Path(".faceflow") / "provenance"
KEY_FILE, CHAIN_FILE, CA_FILE = "signer.key", "signer-chain.pem", "ca.pem"
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
FACEFLOW_ASSERTION = "org.faceflow.provenance"
MEDIA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".png": "image/png",
               ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
CERTIFICATE_DAYS = 3650
# read offline: no remote manifests, no OCSP; no thumbnails in what we sign (they cost more than the signature)
READ_SETTINGS = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False, "verify_trust": True}}
SIGN_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}


class SigningError(RuntimeError):
    """The signing identity or a signature cannot be made; the message names the file and what to do."""


@dataclass(frozen=True)
class SigningIdentity:
    folder: Path

    @property
    def ca_path(self) -> Path:
        return self.folder / CA_FILE


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "faceflow (project-local, self-signed)")])


def _certificate(subject: str, public_key, issuer: str, issuer_key, is_ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    usage = dict(digital_signature=not is_ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
                 key_agreement=False, key_cert_sign=is_ca, crl_sign=is_ca, encipher_only=False, decipher_only=False)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(public_key)
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
               .add_extension(x509.KeyUsage(**usage), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    if not is_ca:  # C2PA wants an end-entity certificate with a signing purpose
        builder = (builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def _write_identity(folder: Path) -> None:
    ca_key, signer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("faceflow project CA", ca_key.public_key(), "faceflow project CA", ca_key, is_ca=True)
    signer = _certificate("faceflow renders", signer_key.public_key(), "faceflow project CA", ca_key, is_ca=False)
    pem = serialization.Encoding.PEM
    (folder / CA_FILE).write_bytes(ca.public_bytes(pem))
    (folder / CHAIN_FILE).write_bytes(signer.public_bytes(pem) + ca.public_bytes(pem))
    descriptor = os.open(folder / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(signer_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / ".gitignore").write_text("# the private signing key of this project: never commit it\n*\n")


def ensure_signing_identity(root: Path) -> SigningIdentity:
    """The project's signing identity, made on first use (atomically, so parallel runs agree on one).

    Args:
        root: the project folder.

    Returns:
        The identity under ``root/.faceflow/provenance``.

    Raises:
        SigningError: the folder exists but lacks a file, or cannot be written.
    """
    folder = Path(root) / PROVENANCE_DIR
    if not folder.is_dir():
        temporary = folder.with_name(f".provenance-{uuid.uuid4().hex[:8]}")
        try:
            temporary.mkdir(parents=True)
            _write_identity(temporary)
            os.rename(temporary, folder)  # fails if another run made it first: theirs is used
            logger.info("made the project's C2PA signing identity in %s (keep %s private)", folder, KEY_FILE)
        except OSError as error:
            if not folder.is_dir():
                raise SigningError(f"{folder}: cannot create the signing identity ({error}); make it writable") from error
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    missing = [name for name in (KEY_FILE, CHAIN_FILE, CA_FILE) if not (folder / name).is_file()]
    if missing:
        raise SigningError(f"{folder} lacks {', '.join(missing)}; delete the folder to make a new signing identity")
    if (folder / KEY_FILE).stat().st_mode & 0o077:
        logger.warning("%s is readable by other users; run: chmod 600 %s", folder / KEY_FILE, folder / KEY_FILE)
    return SigningIdentity(folder)


def _software_version() -> str:
    try:
        return version("faceflow")
    except PackageNotFoundError:
        return "unknown"


def build_manifest(title: str, summary: dict) -> dict:
    """The manifest: c2pa.created by a trained algorithm, plus the faceflow assertion (revision summary)."""
    return {
        "claim_generator_info": [{"name": "faceflow", "version": _software_version()}],
        "title": title,
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": [{
                "action": "c2pa.created", "digitalSourceType": DIGITAL_SOURCE_TYPE,
                "softwareAgent": {"name": "faceflow", "version": _software_version()},
                "description": "face swap rendered by faceflow"}]}},
            {"label": FACEFLOW_ASSERTION, "data": summary},
        ],
    }


class FileSigner:
    """Signs files in place with one identity (reused over many files, e.g. every PNG frame of a render)."""

    def __init__(self, identity: SigningIdentity) -> None:
        info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, (identity.folder / CHAIN_FILE).read_bytes(),
                                   (identity.folder / KEY_FILE).read_bytes(), None)
        self.signer, self.context = c2pa.Signer.from_info(info), c2pa.Context.from_dict(SIGN_SETTINGS)

    def sign(self, path: Path, summary: dict) -> None:
        """Embed a signed manifest in ``path``: written to a temporary file that then replaces it.

        Raises:
            SigningError: the format cannot carry a manifest, or signing or writing failed.
        """
        path = Path(path)
        media_type = MEDIA_TYPES.get(path.suffix.lower())
        if media_type is None:
            raise SigningError(f"{path}: C2PA signing supports {', '.join(sorted(MEDIA_TYPES))} files")
        temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.signing{path.suffix}")
        try:
            with c2pa.Builder(build_manifest(path.name, summary), self.context) as builder, \
                    open(path, "rb") as source, open(temporary, "w+b") as target:
                builder.sign(self.signer, media_type, source, target)
            os.replace(temporary, path)
        except (c2pa.C2paError, OSError) as error:
            temporary.unlink(missing_ok=True)
            raise SigningError(f"{path}: C2PA signing failed ({error}); check free disk space and that the file is "
                               f"a complete {media_type} file") from error


@dataclass(frozen=True)
class ManifestReport:
    """The C2PA label of a file: ``status`` is found, missing or invalid."""

    status: str
    trusted: bool = False  # the signer chains to the trust anchor given (this project's CA)
    signer: str = ""
    claim_generator: str = ""
    digital_source_type: str = ""
    faceflow: dict = field(default_factory=dict)  # the FACEFLOW_ASSERTION data
    problems: tuple[str, ...] = ()  # validation failure codes and explanations


def read_manifest(path: Path, trust_anchor: Path | None = None) -> ManifestReport:
    """Read and validate the C2PA manifest of ``path``.

    Args:
        path: the file.
        trust_anchor: a CA certificate (PEM) whose signers count as trusted, e.g. the project's ca.pem.

    Returns:
        found (intact and declaring a trained-algorithm creation), missing, or invalid (tampered,
        broken, or not declaring AI generation).

    Raises:
        SigningError: the file's format cannot carry a C2PA manifest.
    """
    settings = {**READ_SETTINGS, **({"trust": {"user_anchors": trust_anchor.read_text()}} if trust_anchor else {})}
    try:
        reader = c2pa.Reader.try_create(str(path), context=c2pa.Context.from_dict(settings))
    except c2pa.C2paError as error:
        if "unsupported" in str(error).lower():
            raise SigningError(f"{path}: this file type cannot carry a C2PA manifest ({error})") from None
        return ManifestReport("invalid", problems=(f"unreadable manifest: {error}",))
    if reader is None:
        return ManifestReport("missing")
    with reader:
        store, state = json.loads(reader.json()), reader.get_validation_state()
    manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
    failures = (store.get("validation_results", {}).get("activeManifest", {}).get("failure")
                or store.get("validation_status") or [])
    problems = tuple(f"{item.get('code')}: {item.get('explanation', '')}" for item in failures
                     if item.get("code") != "signingCredential.untrusted")
    assertions = {item.get("label"): item.get("data", {}) for item in manifest.get("assertions", [])}
    actions = (assertions.get("c2pa.actions.v2") or assertions.get("c2pa.actions") or {}).get("actions", [])
    source_type = next((action.get("digitalSourceType", "") for action in actions if action.get("action") == "c2pa.created"), "")
    generator = next(iter(manifest.get("claim_generator_info", [])), {})
    signature = manifest.get("signature_info", {})
    if source_type != DIGITAL_SOURCE_TYPE:
        problems += (f"the manifest does not declare {DIGITAL_SOURCE_TYPE} (c2pa.created)",)
    return ManifestReport(
        status="invalid" if problems or state == "Invalid" else "found", trusted=state == "Trusted",
        signer=f"{signature.get('common_name', '?')}, issued by {signature.get('issuer', '?')}",
        claim_generator=f"{generator.get('name', '?')} {generator.get('version', '')}".strip(),
        digital_source_type=source_type, faceflow=assertions.get(FACEFLOW_ASSERTION, {}), problems=problems)


def sign_render(output: Path, identity: SigningIdentity, summary: dict) -> int:
    """Sign a rendered video, or every PNG frame of a PNG render folder, in place; returns the files signed.

    Raises:
        SigningError: a file cannot be signed (the message names it).
    """
    output = Path(output)
    files = sorted(path for path in output.iterdir() if path.suffix.lower() == ".png") if output.is_dir() else [output]
    signer = FileSigner(identity)
    for path in files:
        signer.sign(path, summary)
    logger.info("signed %d file(s) of %s with the project's C2PA identity", len(files), output)
    return len(files)
