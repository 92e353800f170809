//! Client address → region, from a CIDR table.
//!
//! The default table is the overlay plan of the seed: 10.50.0.0/24 the hub, 10.50.1.0/24 `sa`,
//! 10.50.2.0/24 `us`, 10.50.3.0/24 `eu`, 10.50.4.0/24 `ap`. Longest prefix wins. The table is
//! tiny and fixed after startup, so a linear scan over prefixes sorted longest first is both
//! simplest and fast.

use std::fmt;
use std::net::IpAddr;

/// One `CIDR=region` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrRegion {
    pub net: IpAddr,
    pub prefix: u8,
    pub region: String,
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

    /// Parses `10.50.1.0/24=sa`.
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
        let region = region.trim().to_ascii_lowercase();
        if !crate::names::is_region_code(&region) {
            return Err(err("region must be 2-16 letters, digits or '-'"));
        }
        Ok(CidrRegion {
            net,
            prefix,
            region,
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
    fn bad_entries_are_refused() {
        assert!("10.0.0.0/33=sa".parse::<CidrRegion>().is_err());
        assert!("10.0.0.0=sa".parse::<CidrRegion>().is_err());
        assert!("nope/8=sa".parse::<CidrRegion>().is_err());
        assert!("10.0.0.0/8=".parse::<CidrRegion>().is_err());
        assert!("10.0.0.0/8=s a".parse::<CidrRegion>().is_err());
        assert_eq!("0.0.0.0/0=EU".parse::<CidrRegion>().unwrap().region, "eu");
    }
}
