//! A MaxMind GeoIP2 / GeoLite2 database (Country or City), read with the `maxminddb` crate.
//! Loaded whole into memory on the main thread at startup; a lookup is a walk of the search
//! tree plus one decode of `country.iso_code`: no I/O, no allocation, no lock.

use super::Country;
use maxminddb::{PathElement, Reader};
use std::net::IpAddr;

/// An opened country database.
pub struct GeoIp {
    reader: Reader<Vec<u8>>,
    description: String,
}

impl GeoIp {
    /// Reads and checks the database at `path`. The error names the file and what is wrong.
    pub fn open(path: &std::path::Path) -> Result<GeoIp, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read --geoip-db {}: {e}", path.display()))?;
        GeoIp::from_bytes(bytes, &path.display().to_string())
    }

    /// A database from its bytes; `name` is for messages.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<GeoIp, String> {
        let reader = Reader::from_source(bytes)
            .map_err(|e| format!("--geoip-db {name} is not a MaxMind database: {e}"))?;
        let description = format!(
            "{} ({} nodes, IPv{})",
            reader.metadata().database_type,
            reader.metadata().node_count,
            reader.metadata().ip_version
        );
        Ok(GeoIp {
            reader,
            description,
        })
    }

    /// Its type and size, for the startup log.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The country of `ip`, when the database has one. Lookup errors (an IPv6 address in an
    /// IPv4-only database, a corrupt record) read as "unknown": never a panic.
    #[inline]
    pub fn country(&self, ip: IpAddr) -> Option<Country> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let found = self.reader.lookup(ip).ok()?;
        let code: Option<&str> = found
            .decode_path(&[PathElement::Key("country"), PathElement::Key("iso_code")])
            .ok()?;
        code.and_then(Country::parse)
    }
}
