//! Certificates: loading them from files, choosing one by SNI name, and the self-signed
//! fallback.
//!
//! A [`CertSet`] is immutable: exact names, `*.` wildcards (one label, as browsers match them)
//! and a default for clients without SNI or with a name no certificate covers. It is built on
//! the main thread (startup and SIGHUP), never on a shard, and published through
//! [`Certs`] (an `ArcSwap`): a handshake reads the current set with one atomic load and keeps
//! the `CertifiedKey` it chose, so a reload never touches an open connection.
//!
//! Sources, as in HAProxy's `crt` and `crt-list`:
//! - `--tls-cert` + `--tls-key` (edgeProxy v0.4's pair): one chain and its key; it is the default.
//! - `--tls-cert-dir`: every `*.pem`/`*.crt` file, holding a chain and either its key in the same
//!   file or beside it as `<stem>.key`. The names a certificate serves are its subjectAltName DNS
//!   names. Without `--tls-cert`, the first file by name is the default.
//! - neither: a self-signed ECDSA P-256 certificate for `localhost`, the host name and
//!   `*.<zone>`, with a warning saying how to configure a real one.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where certificates come from: the configuration, read again on every reload.
#[derive(Debug, Clone, Default)]
pub struct CertSources {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    /// The DNS zone: its wildcard goes into the self-signed certificate.
    pub zone: String,
}

/// A certificate that cannot be used: one line naming the file.
#[derive(Debug)]
pub struct CertError(pub String);

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One loaded certificate and the names it serves.
struct Loaded {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
    file: PathBuf,
}

/// The certificates in force: immutable, replaced whole on reload.
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the parent domain: `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// True when serving the generated self-signed certificate.
    pub self_signed: bool,
    /// One line for the log: what was loaded.
    pub summary: String,
    /// How many certificates (chains) were loaded.
    pub count: usize,
}

impl fmt::Debug for CertSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)
    }
}

impl CertSet {
    /// The certificate for `sni`: exact name, then the wildcard of its parent, then the default.
    pub fn select(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else {
            return &self.default;
        };
        if let Some(k) = self.exact.get(name) {
            return k;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return k;
            }
        }
        &self.default
    }

    fn from_loaded(loaded: Vec<Loaded>, self_signed: bool) -> CertSet {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut summary = Vec::new();
        for l in &loaded {
            for name in &l.names {
                let map = match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(name.clone()),
                };
                // First file wins for a name, as in HAProxy's crt-list order.
                map.or_insert_with(|| l.key.clone());
            }
            summary.push(format!("{} [{}]", l.file.display(), l.names.join(" ")));
        }
        CertSet {
            exact,
            wildcard,
            default: loaded[0].key.clone(),
            self_signed,
            summary: summary.join(", "),
            count: loaded.len(),
        }
    }

    /// Loads every configured certificate, or generates the self-signed one.
    pub fn load(src: &CertSources, provider: &CryptoProvider) -> Result<CertSet, CertError> {
        let mut loaded = Vec::new();
        match (&src.cert, &src.key) {
            (Some(cert), Some(key)) => loaded.push(load_pair(cert, key, provider)?),
            (Some(_), None) | (None, Some(_)) => {
                return Err(CertError(
                    "EDGEPROXY_TLS_CERT and EDGEPROXY_TLS_KEY must be given together".into(),
                ))
            }
            (None, None) => {}
        }
        if let Some(dir) = &src.dir {
            loaded.extend(load_dir(dir, provider)?);
        }
        if loaded.is_empty() {
            return self_signed(&src.zone, provider);
        }
        Ok(CertSet::from_loaded(loaded, false))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| CertError(format!("cannot read {}: {e}", path.display())))
}

fn chain_of(pem: &[u8], file: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError(format!("{}: bad PEM certificate: {e}", file.display())))?;
    if chain.is_empty() {
        return Err(CertError(format!(
            "{}: no CERTIFICATE block in the file",
            file.display()
        )));
    }
    Ok(chain)
}

/// A PKCS#8, PKCS#1 (RSA) or SEC1 (EC) key, whichever the PEM holds.
fn key_of(pem: &[u8], file: &Path) -> Result<Option<PrivateKeyDer<'static>>, CertError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(k) => Ok(Some(k)),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Ok(None),
        Err(e) => Err(CertError(format!(
            "{}: bad PEM private key: {e}",
            file.display()
        ))),
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<Loaded, CertError> {
    let names = san_dns_names(&chain[0]).ok_or_else(|| {
        CertError(format!(
            "{}: cannot read the certificate's names (malformed X.509)",
            cert_file.display()
        ))
    })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        CertError(format!(
            "{}: the key does not fit the certificate {} ({e})",
            key_file.display(),
            cert_file.display()
        ))
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        names,
        file: cert_file.to_path_buf(),
    })
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Loaded, CertError> {
    let chain = chain_of(&read(cert)?, cert)?;
    let key_pem = read(key)?;
    let k = key_of(&key_pem, key)?.ok_or_else(|| {
        CertError(format!(
            "{}: no PRIVATE KEY block in the file",
            key.display()
        ))
    })?;
    certified(chain, k, cert, key, provider)
}

fn load_dir(dir: &Path, provider: &CryptoProvider) -> Result<Vec<Loaded>, CertError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| CertError(format!("cannot read {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("pem") | Some("crt")
                )
        })
        .collect();
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let pem = read(&file)?;
        let chain = chain_of(&pem, &file)?;
        let (key, key_file) = match key_of(&pem, &file)? {
            Some(k) => (k, file.clone()),
            None => {
                let key_file = file.with_extension("key");
                let key_pem = read(&key_file)?;
                let k = key_of(&key_pem, &key_file)?.ok_or_else(|| {
                    CertError(format!(
                        "{}: no PRIVATE KEY block in the file",
                        key_file.display()
                    ))
                })?;
                (k, key_file)
            }
        };
        out.push(certified(chain, key, &file, &key_file, provider)?);
    }
    if out.is_empty() {
        return Err(CertError(format!(
            "{}: no *.pem or *.crt certificate in the directory",
            dir.display()
        )));
    }
    Ok(out)
}

/// This machine's host name, lower-cased, if it is a usable DNS name.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..end]).ok()?.to_ascii_lowercase();
    crate::names::is_dns_name(&name).then_some(name)
}

fn self_signed(zone: &str, provider: &CryptoProvider) -> Result<CertSet, CertError> {
    let mut names = vec!["localhost".to_string()];
    if let Some(h) = host_name() {
        if h != "localhost" {
            names.push(h);
        }
    }
    names.push(format!("*.{zone}"));
    let rcgen::CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names.clone())
        .map_err(|e| CertError(format!("cannot generate a self-signed certificate: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let file = PathBuf::from("(self-signed)");
    let loaded = certified(vec![cert.der().clone()], key, &file, &file, provider)?;
    Ok(CertSet::from_loaded(vec![loaded], true))
}

/// The shared, swappable certificate set every shard's resolver reads.
#[derive(Debug)]
pub struct Certs {
    pub current: arc_swap::ArcSwap<CertSet>,
}

impl Certs {
    pub fn new(set: CertSet) -> Certs {
        Certs {
            current: arc_swap::ArcSwap::from_pointee(set),
        }
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.load();
        Some(set.select(hello.server_name()).clone())
    }
}

// --- subjectAltName: just enough DER to list a certificate's DNS names. ---

/// One DER element: (tag, contents, rest). `None` on any malformation.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// The DNS names in a certificate's subjectAltName extension, lower-cased (empty when it has
/// none). `None` when the certificate is not well-formed enough to tell.
pub fn san_dns_names(cert: &[u8]) -> Option<Vec<String>> {
    let (0x30, cert, _) = der(cert)? else {
        return None;
    };
    let (0x30, mut tbs, _) = der(cert)? else {
        return None;
    };
    let mut names = Vec::new();
    while !tbs.is_empty() {
        let (tag, content, rest) = der(tbs)?;
        tbs = rest;
        if tag != 0xa3 {
            continue; // version, serial, algorithms, names, validity, key, unique ids
        }
        let (0x30, mut exts, _) = der(content)? else {
            return None;
        };
        while !exts.is_empty() {
            let (0x30, ext, rest) = der(exts)? else {
                return None;
            };
            exts = rest;
            let (0x06, oid, mut ext) = der(ext)? else {
                return None;
            };
            if oid != OID_SUBJECT_ALT_NAME {
                continue;
            }
            if let Some((0x01, _, rest)) = der(ext) {
                ext = rest; // critical flag
            }
            let (0x04, value, _) = der(ext)? else {
                return None;
            };
            let (0x30, mut general_names, _) = der(value)? else {
                return None;
            };
            while !general_names.is_empty() {
                let (tag, name, rest) = der(general_names)?;
                general_names = rest;
                if tag == 0x82 {
                    if let Ok(s) = std::str::from_utf8(name) {
                        names.push(s.to_ascii_lowercase());
                    }
                }
            }
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> CryptoProvider {
        rustls::crypto::aws_lc_rs::default_provider()
    }

    fn cert(names: &[&str]) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("edgeproxy-certs-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn san_names_are_read() {
        let c = rcgen::generate_simple_self_signed(vec!["a.example".into(), "*.b.example".into()])
            .unwrap();
        assert_eq!(
            san_dns_names(c.cert.der()).unwrap(),
            vec!["a.example", "*.b.example"]
        );
        // Truncations of a certificate never panic.
        let der = c.cert.der().to_vec();
        for n in 0..der.len() {
            let _ = san_dns_names(&der[..n]);
        }
    }

    #[test]
    fn selection_exact_wildcard_default() {
        let d = tmpdir("select");
        let (a, ak) = cert(&["a.example"]);
        let (w, wk) = cert(&["*.w.example"]);
        std::fs::write(d.join("1-a.pem"), format!("{a}{ak}")).unwrap();
        std::fs::write(d.join("2-w.crt"), &w).unwrap();
        std::fs::write(d.join("2-w.key"), &wk).unwrap();
        let src = CertSources {
            dir: Some(d.clone()),
            ..Default::default()
        };
        let set = CertSet::load(&src, &provider()).unwrap();
        let leaf = |k: &Arc<CertifiedKey>| k.cert[0].to_vec();
        let a_der = leaf(set.select(Some("a.example")));
        let w_der = leaf(set.select(Some("x.w.example")));
        assert_ne!(a_der, w_der);
        // A wildcard covers one label only; unknown names and no SNI get the default (first file).
        assert_eq!(leaf(set.select(Some("y.x.w.example"))), a_der);
        assert_eq!(leaf(set.select(Some("w.example"))), a_der);
        assert_eq!(leaf(set.select(None)), a_der);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn errors_name_the_file() {
        let d = tmpdir("errors");
        let (a, _) = cert(&["a.example"]);
        let (_, other_key) = cert(&["b.example"]);
        std::fs::write(d.join("a.pem"), &a).unwrap();
        std::fs::write(d.join("other.key"), &other_key).unwrap();
        let p = provider();
        let pair = |c: &str, k: &str| CertSources {
            cert: Some(d.join(c)),
            key: Some(d.join(k)),
            ..Default::default()
        };
        let e = CertSet::load(&pair("a.pem", "missing.key"), &p)
            .unwrap_err()
            .0;
        assert!(e.contains("missing.key"), "{e}");
        let e = CertSet::load(&pair("a.pem", "other.key"), &p)
            .unwrap_err()
            .0;
        assert!(e.contains("other.key") && e.contains("does not fit"), "{e}");
        let e = CertSet::load(&pair("other.key", "other.key"), &p)
            .unwrap_err()
            .0;
        assert!(e.contains("no CERTIFICATE"), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn self_signed_when_nothing_is_configured() {
        let src = CertSources {
            zone: "internal".into(),
            ..Default::default()
        };
        let set = CertSet::load(&src, &provider()).unwrap();
        assert!(set.self_signed);
        let names = san_dns_names(&set.select(None).cert[0]).unwrap();
        assert!(names.contains(&"localhost".to_string()));
        assert!(names.contains(&"*.internal".to_string()));
    }
}
