//! Client address → region (and country).
//!
//! Three sources, first answer wins:
//! 1. the overlay's CIDR table ([`RegionMap`]; longest prefix wins). The default is the seed's
//!    plan: 10.50.0.0/24 the hub, 10.50.1.0/24 `sa`, 10.50.2.0/24 `us`, 10.50.3.0/24 `eu`,
//!    10.50.4.0/24 `ap`; `--region-map` / `--region-map-file` replace it. An entry may name a
//!    country too (`10.50.1.0/24=sa:BR`) or a POP code that implies both (`=gru`);
//! 2. a MaxMind GeoIP2/GeoLite2 country database (`--geoip-db`), for public addresses: its
//!    country, then the country's region from [`Regions`];
//! 3. nothing: the client is served from the hub's region first.
//!
//! Everything here is built once on the main thread at startup and immutable after: lookups
//! are reads of plain memory, fit for every shard. [`locate`] is the one entry point for
//! "who is this client" (the proxy, DNS with or without EDNS Client Subnet, the route API).

mod geoip;
mod regions;
#[cfg(test)]
pub(crate) mod testdb;

pub use geoip::GeoIp;
pub use regions::{parse_alias, parse_country_region, parse_distance, region_code, Regions};

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

/// An ISO 3166-1 alpha-2 country code, upper-case.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country([u8; 2]);

impl Country {
    /// `br`, `BR` → `BR`; anything but two ASCII letters → `None`.
    pub fn parse(s: &str) -> Option<Country> {
        match s.trim().as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        // Two ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `CIDR=REGION[:CC]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrRegion {
    pub net: IpAddr,
    pub prefix: u8,
    /// Lower-case region code as written (`hub`, a region, or a POP code until resolved).
    pub region: String,
    pub country: Option<Country>,
}

impl CidrRegion {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V6(_), IpAddr::V4(ip)) => self.contains(IpAddr::V6(ip.to_ipv6_mapped())),
            (IpAddr::V4(_), IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
                Some(v4) => self.contains(IpAddr::V4(v4)),
                None => false,
            },
        }
    }
}

/// Why a `CIDR=region` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoParseError(pub String);

impl fmt::Display for GeoParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for CidrRegion {
    type Err = GeoParseError;

    /// Parses `10.50.1.0/24=sa`, `10.50.1.0/24=sa:BR` or `10.50.1.0/24=gru`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| GeoParseError(format!("invalid region map entry '{s}': {why}"));
        let (cidr, region) = s
            .split_once('=')
            .ok_or_else(|| err("expected CIDR=REGION"))?;
        let (net, prefix) = cidr
            .trim()
            .split_once('/')
            .ok_or_else(|| err("expected a /prefix"))?;
        let net: IpAddr = net.parse().map_err(|_| err("not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("prefix is not a number"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(err("prefix too long"));
        }
        let (region, country) = match region.split_once(':') {
            Some((r, c)) => (
                r,
                Some(Country::parse(c).ok_or_else(|| err("country must be two letters"))?),
            ),
            None => (region, None),
        };
        let region = region.trim().to_ascii_lowercase();
        if !crate::names::is_region_code(&region) {
            return Err(err("region must be 2-16 letters, digits or '-'"));
        }
        Ok(CidrRegion {
            net,
            prefix,
            region,
            country,
        })
    }
}

/// The CIDR → region table.
#[derive(Debug, Clone)]
pub struct RegionMap {
    entries: Vec<CidrRegion>,
}

impl RegionMap {
    /// The seed's overlay plan.
    pub fn overlay_default() -> Self {
        let entries = [
            "10.50.0.0/24=hub",
            "10.50.1.0/24=sa",
            "10.50.2.0/24=us",
            "10.50.3.0/24=eu",
            "10.50.4.0/24=ap",
        ]
        .iter()
        .map(|e| e.parse().expect("built-in table is valid"))
        .collect();
        Self::new(entries)
    }

    pub fn new(mut entries: Vec<CidrRegion>) -> Self {
        entries.sort_by_key(|e| std::cmp::Reverse(e.prefix));
        RegionMap { entries }
    }

    /// Reads a region map file: one `CIDR=REGION[:CC]` per line (or several, comma-separated);
    /// blank lines and `#` comments are skipped. Errors name the file and line.
    pub fn parse_file(text: &str, name: &str) -> Result<Vec<CidrRegion>, GeoParseError> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            for entry in line.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                out.push(
                    entry.parse().map_err(|e: GeoParseError| {
                        GeoParseError(format!("{name}:{}: {e}", i + 1))
                    })?,
                );
            }
        }
        Ok(out)
    }

    /// Resolves every entry's region through `regions` (POP codes become their region and
    /// country); an unknown code is an error naming the entry.
    pub fn resolve(self, regions: &Regions) -> Result<RegionMap, GeoParseError> {
        let mut entries = self.entries;
        for e in &mut entries {
            if e.region == "hub" {
                continue;
            }
            let (region, cc) = regions.resolve(&e.region).map_err(|why| {
                GeoParseError(format!("region map entry {}/{}: {why}", e.net, e.prefix))
            })?;
            e.region = region.to_string();
            e.country = e.country.or(cc);
        }
        Ok(RegionMap { entries })
    }

    /// The entry covering `ip` (longest prefix), if any.
    #[inline]
    pub fn entry_of(&self, ip: IpAddr) -> Option<&CidrRegion> {
        self.entries.iter().find(|e| e.contains(ip))
    }

    /// The region of `ip`, or `None` when no entry covers it. The pseudo-region `hub` (the
    /// hub's own subnet) maps to `None`: such a client is served from the hub's region.
    pub fn region_of(&self, ip: IpAddr) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.contains(ip))
            .map(|e| e.region.as_str())
            .filter(|r| *r != "hub")
    }

    pub fn entries(&self) -> &[CidrRegion] {
        &self.entries
    }
}

/// Where a client's location came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The CIDR table.
    Map,
    /// The GeoIP database.
    GeoIp,
    /// Nothing knew the address.
    Unknown,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Map => "region-map",
            Source::GeoIp => "geoip",
            Source::Unknown => "unknown",
        }
    }
}

/// Where a client is, as far as choosing a backend is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location<'g> {
    /// The client's region (`None`: unknown, or the hub's own subnet).
    pub region: Option<&'g str>,
    pub country: Option<Country>,
    pub source: Source,
}

/// The client geography of the hub: CIDR table, region vocabulary, optional GeoIP database.
pub struct Geo {
    map: RegionMap,
    regions: Regions,
    geoip: Option<GeoIp>,
}

impl fmt::Debug for Geo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Geo")
            .field("map", &self.map)
            .field("regions", &self.regions.known().collect::<Vec<_>>())
            .field("geoip", &self.geoip.as_ref().map(|g| g.description()))
            .finish()
    }
}

impl Default for Geo {
    fn default() -> Self {
        Geo::new(RegionMap::overlay_default(), Regions::default(), None)
            .expect("the built-in tables agree")
    }
}

impl Geo {
    /// Resolves `map` through `regions` (see [`RegionMap::resolve`]).
    pub fn new(
        map: RegionMap,
        regions: Regions,
        geoip: Option<GeoIp>,
    ) -> Result<Geo, GeoParseError> {
        let map = map.resolve(&regions)?;
        Ok(Geo {
            map,
            regions,
            geoip,
        })
    }

    /// The built-in vocabulary with `map` as the CIDR table (tests, benches; a map naming an
    /// unknown region gives the default geography instead: use [`Geo::new`] to see the error).
    pub fn with_map(map: RegionMap) -> Geo {
        Geo::new(map, Regions::default(), None).unwrap_or_default()
    }

    pub fn regions(&self) -> &Regions {
        &self.regions
    }

    pub fn region_map(&self) -> &RegionMap {
        &self.map
    }

    pub fn geoip(&self) -> Option<&GeoIp> {
        self.geoip.as_ref()
    }

    /// Where `ip` is: see the module docs. Allocation-free.
    #[inline]
    pub fn locate(&self, ip: IpAddr) -> Location<'_> {
        if let Some(e) = self.map.entry_of(ip) {
            let region = Some(e.region.as_str()).filter(|r| *r != "hub");
            return Location {
                region,
                country: e.country,
                source: Source::Map,
            };
        }
        if let Some(cc) = self.geoip.as_ref().and_then(|g| g.country(ip)) {
            return Location {
                region: self.regions.of_country(cc),
                country: Some(cc),
                source: Source::GeoIp,
            };
        }
        Location {
            region: None,
            country: None,
            source: Source::Unknown,
        }
    }
}

static INSTALLED: OnceLock<Arc<Geo>> = OnceLock::new();

/// Makes `geo` the process's geography (once, at startup, on the main thread). Later calls
/// are ignored: the tables are immutable once shards run.
pub fn install(geo: Arc<Geo>) {
    let _ = INSTALLED.set(geo);
}

/// The process's geography: what [`install`] set, else the built-in default.
pub fn current() -> &'static Geo {
    static DEFAULT: OnceLock<Geo> = OnceLock::new();
    match INSTALLED.get() {
        Some(g) => g,
        None => DEFAULT.get_or_init(Geo::default),
    }
}

/// Client address → (region, country) with the process's geography: what EDNS Client Subnet
/// handling calls with the subnet's address. See [`Geo::locate`].
#[inline]
pub fn locate(ip: IpAddr) -> Location<'static> {
    current().locate(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_default_maps_seed_subnets() {
        let map = RegionMap::overlay_default();
        assert_eq!(map.region_of("10.50.1.1".parse().unwrap()), Some("sa"));
        assert_eq!(map.region_of("10.50.2.3".parse().unwrap()), Some("us"));
        assert_eq!(map.region_of("10.50.3.2".parse().unwrap()), Some("eu"));
        assert_eq!(map.region_of("10.50.4.3".parse().unwrap()), Some("ap"));
        assert_eq!(map.region_of("10.50.0.1".parse().unwrap()), None);
        assert_eq!(map.region_of("192.0.2.1".parse().unwrap()), None);
        assert_eq!(
            map.region_of("::ffff:10.50.1.9".parse().unwrap()),
            Some("sa")
        );
    }

    #[test]
    fn longest_prefix_wins() {
        let map = RegionMap::new(vec![
            "127.0.0.0/8=us".parse().unwrap(),
            "127.0.1.0/24=sa".parse().unwrap(),
        ]);
        assert_eq!(map.region_of("127.0.1.5".parse().unwrap()), Some("sa"));
        assert_eq!(map.region_of("127.0.2.5".parse().unwrap()), Some("us"));
    }

    #[test]
    fn entries_with_countries_and_pop_codes() {
        let map = RegionMap::new(vec![
            "127.0.1.0/24=sa:br".parse().unwrap(),
            "127.0.2.0/24=IAD".parse().unwrap(),
            "127.0.0.0/24=hub".parse().unwrap(),
        ]);
        let geo = Geo::new(map, Regions::default(), None).unwrap();
        let l = geo.locate("127.0.1.9".parse().unwrap());
        assert_eq!((l.region, l.country), (Some("sa"), Country::parse("BR")));
        assert_eq!(l.source, Source::Map);
        let l = geo.locate("127.0.2.9".parse().unwrap());
        assert_eq!((l.region, l.country), (Some("us"), Country::parse("US")));
        let l = geo.locate("127.0.0.1".parse().unwrap());
        assert_eq!((l.region, l.source), (None, Source::Map));
        let l = geo.locate("192.0.2.1".parse().unwrap());
        assert_eq!(
            (l.region, l.country, l.source),
            (None, None, Source::Unknown)
        );
        // Unknown codes are refused, not guessed.
        let bad = RegionMap::new(vec!["10.0.0.0/8=mars".parse().unwrap()]);
        let e = Geo::new(bad, Regions::default(), None).unwrap_err().0;
        assert!(e.contains("unknown region 'mars'"), "{e}");
    }

    #[test]
    fn region_map_files() {
        let text =
            "# overlay\n10.50.1.0/24=sa:BR  # sao paulo\n\n10.50.2.0/24=us, 10.50.3.0/24=eu\n";
        let entries = RegionMap::parse_file(text, "map.txt").unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].country, Country::parse("BR"));
        let e = RegionMap::parse_file("10.0.0.0/8=sa\nnope\n", "map.txt").unwrap_err();
        assert!(e.0.starts_with("map.txt:2: "), "{}", e.0);
    }

    #[test]
    fn geoip_countries_map_to_regions() {
        let db = testdb::country_db(&[
            ("198.51.100.0/24", "BR"),
            ("203.0.113.0/25", "JP"),
            ("192.0.2.0/24", "ZZ"),
        ]);
        let geoip = GeoIp::from_bytes(db, "test").unwrap();
        let geo = Geo::new(
            RegionMap::overlay_default(),
            Regions::default(),
            Some(geoip),
        )
        .unwrap();
        let l = geo.locate("198.51.100.7".parse().unwrap());
        assert_eq!(
            (l.region, l.country, l.source),
            (Some("sa"), Country::parse("BR"), Source::GeoIp)
        );
        let l = geo.locate("203.0.113.5".parse().unwrap());
        assert_eq!((l.region, l.country), (Some("ap"), Country::parse("JP")));
        // Outside the /25: not in the database.
        assert_eq!(
            geo.locate("203.0.113.200".parse().unwrap()).source,
            Source::Unknown
        );
        // A country the table does not place: country known, region not.
        let l = geo.locate("192.0.2.1".parse().unwrap());
        assert_eq!((l.region, l.country), (None, Country::parse("ZZ")));
        // The CIDR table wins over the database; IPv6 asks of a v4 database find nothing.
        assert_eq!(geo.locate("10.50.3.1".parse().unwrap()).region, Some("eu"));
        assert_eq!(
            geo.locate("2001:db8::1".parse().unwrap()).source,
            Source::Unknown
        );
        assert!(GeoIp::from_bytes(b"not a database".to_vec(), "junk").is_err());
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!("10.0.0.0/33=sa".parse::<CidrRegion>().is_err());
        assert!("10.0.0.0=sa".parse::<CidrRegion>().is_err());
        assert!("nope/8=sa".parse::<CidrRegion>().is_err());
        assert!("10.0.0.0/8=".parse::<CidrRegion>().is_err());
        assert!("10.0.0.0/8=s a".parse::<CidrRegion>().is_err());
        assert!("10.0.0.0/8=sa:BRA".parse::<CidrRegion>().is_err());
        assert_eq!("0.0.0.0/0=EU".parse::<CidrRegion>().unwrap().region, "eu");
    }
}
