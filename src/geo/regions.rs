//! The region vocabulary: which region codes exist, which finer codes (airport / POP codes such
//! as `gru`, `iad`) and which countries belong to which region, and how far regions are from
//! one another. Built once at startup from the built-in tables and the flags; immutable after.
//!
//! Unknown codes are refused, never guessed: a registration with region `ue` gets a 400 that
//! names the known regions, rather than silently landing in some default region.

use super::Country;
use std::fmt::Write as _;

/// The built-in regions and their distances (round-trip milliseconds, roughly; only the order
/// matters): what the "nearest other region" tiers follow.
const DISTANCES: &[(&str, &str, u32)] = &[
    ("sa", "us", 120),
    ("sa", "eu", 190),
    ("sa", "ap", 300),
    ("us", "eu", 80),
    ("us", "ap", 150),
    ("eu", "ap", 200),
];

/// Built-in POP / airport codes: code → (region, country).
const ALIASES: &[(&str, &str, &str)] = &[
    ("gru", "sa", "BR"),
    ("gig", "sa", "BR"),
    ("poa", "sa", "BR"),
    ("for", "sa", "BR"),
    ("eze", "sa", "AR"),
    ("scl", "sa", "CL"),
    ("bog", "sa", "CO"),
    ("lim", "sa", "PE"),
    ("uio", "sa", "EC"),
    ("iad", "us", "US"),
    ("ord", "us", "US"),
    ("lax", "us", "US"),
    ("dfw", "us", "US"),
    ("sjc", "us", "US"),
    ("sea", "us", "US"),
    ("atl", "us", "US"),
    ("mia", "us", "US"),
    ("ewr", "us", "US"),
    ("jfk", "us", "US"),
    ("den", "us", "US"),
    ("yyz", "us", "CA"),
    ("yul", "us", "CA"),
    ("mex", "us", "MX"),
    ("lhr", "eu", "GB"),
    ("fra", "eu", "DE"),
    ("cdg", "eu", "FR"),
    ("ams", "eu", "NL"),
    ("mad", "eu", "ES"),
    ("mxp", "eu", "IT"),
    ("arn", "eu", "SE"),
    ("waw", "eu", "PL"),
    ("dub", "eu", "IE"),
    ("zrh", "eu", "CH"),
    ("vie", "eu", "AT"),
    ("jnb", "eu", "ZA"),
    ("dxb", "eu", "AE"),
    ("nrt", "ap", "JP"),
    ("hnd", "ap", "JP"),
    ("kix", "ap", "JP"),
    ("icn", "ap", "KR"),
    ("hkg", "ap", "HK"),
    ("sin", "ap", "SG"),
    ("syd", "ap", "AU"),
    ("mel", "ap", "AU"),
    ("akl", "ap", "NZ"),
    ("bom", "ap", "IN"),
    ("del", "ap", "IN"),
    ("maa", "ap", "IN"),
    ("tpe", "ap", "TW"),
    ("bkk", "ap", "TH"),
    ("cgk", "ap", "ID"),
    ("mnl", "ap", "PH"),
];

/// Built-in ISO 3166-1 country → region. Countries not listed have no region (their clients
/// are served from the hub's region, then the nearest ones).
const COUNTRIES: &[(&str, &str)] = &[
    // South America.
    ("AR", "sa"),
    ("BO", "sa"),
    ("BR", "sa"),
    ("CL", "sa"),
    ("CO", "sa"),
    ("EC", "sa"),
    ("FK", "sa"),
    ("GF", "sa"),
    ("GY", "sa"),
    ("PE", "sa"),
    ("PY", "sa"),
    ("SR", "sa"),
    ("UY", "sa"),
    ("VE", "sa"),
    // North and Central America, the Caribbean.
    ("US", "us"),
    ("CA", "us"),
    ("MX", "us"),
    ("GT", "us"),
    ("BZ", "us"),
    ("SV", "us"),
    ("HN", "us"),
    ("NI", "us"),
    ("CR", "us"),
    ("PA", "us"),
    ("CU", "us"),
    ("DO", "us"),
    ("HT", "us"),
    ("JM", "us"),
    ("PR", "us"),
    ("BS", "us"),
    ("TT", "us"),
    ("BB", "us"),
    ("GL", "us"),
    ("BM", "us"),
    // Europe, with the Middle East and Africa (closest by transit).
    ("AT", "eu"),
    ("BE", "eu"),
    ("BG", "eu"),
    ("CH", "eu"),
    ("CY", "eu"),
    ("CZ", "eu"),
    ("DE", "eu"),
    ("DK", "eu"),
    ("EE", "eu"),
    ("ES", "eu"),
    ("FI", "eu"),
    ("FR", "eu"),
    ("GB", "eu"),
    ("GR", "eu"),
    ("HR", "eu"),
    ("HU", "eu"),
    ("IE", "eu"),
    ("IS", "eu"),
    ("IT", "eu"),
    ("LT", "eu"),
    ("LU", "eu"),
    ("LV", "eu"),
    ("MT", "eu"),
    ("NL", "eu"),
    ("NO", "eu"),
    ("PL", "eu"),
    ("PT", "eu"),
    ("RO", "eu"),
    ("RS", "eu"),
    ("SE", "eu"),
    ("SI", "eu"),
    ("SK", "eu"),
    ("UA", "eu"),
    ("TR", "eu"),
    ("RU", "eu"),
    ("BY", "eu"),
    ("MD", "eu"),
    ("AL", "eu"),
    ("BA", "eu"),
    ("MK", "eu"),
    ("ME", "eu"),
    ("IL", "eu"),
    ("AE", "eu"),
    ("SA", "eu"),
    ("QA", "eu"),
    ("KW", "eu"),
    ("BH", "eu"),
    ("OM", "eu"),
    ("JO", "eu"),
    ("LB", "eu"),
    ("EG", "eu"),
    ("MA", "eu"),
    ("DZ", "eu"),
    ("TN", "eu"),
    ("NG", "eu"),
    ("GH", "eu"),
    ("KE", "eu"),
    ("ZA", "eu"),
    ("ET", "eu"),
    ("SN", "eu"),
    // Asia-Pacific.
    ("JP", "ap"),
    ("KR", "ap"),
    ("CN", "ap"),
    ("HK", "ap"),
    ("TW", "ap"),
    ("MO", "ap"),
    ("SG", "ap"),
    ("MY", "ap"),
    ("TH", "ap"),
    ("VN", "ap"),
    ("PH", "ap"),
    ("ID", "ap"),
    ("IN", "ap"),
    ("PK", "ap"),
    ("BD", "ap"),
    ("LK", "ap"),
    ("NP", "ap"),
    ("AU", "ap"),
    ("NZ", "ap"),
    ("KH", "ap"),
    ("MM", "ap"),
    ("MN", "ap"),
    ("KZ", "ap"),
    ("UZ", "ap"),
];

/// Another region seen from one: (region, distance, rank).
pub type Neighbour = (Box<str>, u32, u32);

/// The region vocabulary (see the module docs).
#[derive(Debug, Clone)]
pub struct Regions {
    /// Known region codes, lower-case, sorted.
    known: Vec<Box<str>>,
    /// Finer code → (region, country), sorted by code.
    aliases: Vec<(Box<str>, Box<str>, Option<Country>)>,
    /// Country → region, sorted by country.
    countries: Vec<(Country, Box<str>)>,
    /// For every known region, the other known regions by distance: (to, distance, rank);
    /// rank 1 is the nearest, equal distances share a rank.
    near: Vec<(Box<str>, Vec<Neighbour>)>,
}

impl Default for Regions {
    fn default() -> Self {
        Regions::configure(&[], &[], &[]).expect("the built-in tables are valid")
    }
}

/// A region code, lower-cased, or why it is not one (flags and tables alike).
pub fn region_code(s: &str) -> Result<String, String> {
    let r = s.trim().to_ascii_lowercase();
    if crate::names::is_region_code(&r) {
        Ok(r)
    } else {
        Err(format!(
            "'{s}' is not a region code (2-16 letters, digits or '-')"
        ))
    }
}

/// `A-B=N`: the distance between two regions.
pub fn parse_distance(s: &str) -> Result<(String, String, u32), String> {
    let bad = |why: &str| {
        format!("invalid region distance '{s}': {why} (expected A-B=N, e.g. sa-us=120)")
    };
    let (pair, n) = s.split_once('=').ok_or_else(|| bad("no '='"))?;
    let (a, b) = pair
        .split_once(':')
        .or_else(|| pair.split_once('-'))
        .ok_or_else(|| bad("expected two regions"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| bad("distance is not a number"))?;
    let (a, b) = (
        region_code(a).map_err(|e| bad(&e))?,
        region_code(b).map_err(|e| bad(&e))?,
    );
    if a == b {
        return Err(bad("a region's distance to itself is 0"));
    }
    Ok((a, b, n))
}

/// `CODE=REGION[:CC]`: a finer code (a POP or airport) and the region (and country) it is in.
pub fn parse_alias(s: &str) -> Result<(String, String, Option<Country>), String> {
    let bad = |why: &str| {
        format!("invalid region alias '{s}': {why} (expected CODE=REGION[:CC], e.g. gru=sa:BR)")
    };
    let (code, rest) = s.split_once('=').ok_or_else(|| bad("no '='"))?;
    let (region, cc) = match rest.split_once(':') {
        Some((r, c)) => (
            r,
            Some(Country::parse(c).ok_or_else(|| bad("country must be two letters"))?),
        ),
        None => (rest, None),
    };
    Ok((
        region_code(code).map_err(|e| bad(&e))?,
        region_code(region).map_err(|e| bad(&e))?,
        cc,
    ))
}

/// `CC=REGION`: the region of a country's clients (GeoIP answers).
pub fn parse_country_region(s: &str) -> Result<(Country, String), String> {
    let bad =
        |why: &str| format!("invalid country region '{s}': {why} (expected CC=REGION, e.g. MX=us)");
    let (cc, region) = s.split_once('=').ok_or_else(|| bad("no '='"))?;
    let cc = Country::parse(cc).ok_or_else(|| bad("country must be two letters"))?;
    Ok((cc, region_code(region).map_err(|e| bad(&e))?))
}

impl Regions {
    /// The built-in tables with `distances`, `aliases` and `countries` added or overriding.
    /// Every region named anywhere must be known: defined by a distance (built-in or given).
    pub fn configure(
        distances: &[(String, String, u32)],
        aliases: &[(String, String, Option<Country>)],
        countries: &[(Country, String)],
    ) -> Result<Regions, String> {
        let mut dist: Vec<(String, String, u32)> = DISTANCES
            .iter()
            .map(|(a, b, n)| (a.to_string(), b.to_string(), *n))
            .collect();
        for (a, b, n) in distances {
            dist.retain(|(x, y, _)| !((x == a && y == b) || (x == b && y == a)));
            dist.push((a.clone(), b.clone(), *n));
        }
        let mut known: Vec<Box<str>> = dist
            .iter()
            .flat_map(|(a, b, _)| [a.as_str().into(), b.as_str().into()])
            .collect();
        known.sort();
        known.dedup();
        let is_known = |r: &str| known.binary_search_by(|k| (**k).cmp(r)).is_ok();
        let mut alias_list: Vec<(Box<str>, Box<str>, Option<Country>)> = ALIASES
            .iter()
            .map(|(c, r, cc)| ((*c).into(), (*r).into(), Country::parse(cc)))
            .collect();
        for (code, region, cc) in aliases {
            if !is_known(region) {
                return Err(format!(
                    "region alias {code}={region}: unknown region '{region}' (known: {})",
                    join(&known)
                ));
            }
            if is_known(code) {
                return Err(format!(
                    "region alias {code}={region}: '{code}' is a region itself"
                ));
            }
            alias_list.retain(|(c, _, _)| **c != **code);
            alias_list.push((code.as_str().into(), region.as_str().into(), *cc));
        }
        alias_list.retain(|(c, _, _)| !is_known(c));
        alias_list.sort_by(|a, b| a.0.cmp(&b.0));
        let mut country_list: Vec<(Country, Box<str>)> = COUNTRIES
            .iter()
            .map(|(cc, r)| (Country::parse(cc).expect("built-in"), (*r).into()))
            .collect();
        for (cc, region) in countries {
            if !is_known(region) {
                return Err(format!(
                    "country region {cc}={region}: unknown region '{region}' (known: {})",
                    join(&known)
                ));
            }
            country_list.retain(|(c, _)| c != cc);
            country_list.push((*cc, region.as_str().into()));
        }
        country_list.sort_by_key(|(c, _)| *c);
        let near = known
            .iter()
            .map(|from| {
                let mut to: Vec<Neighbour> = dist
                    .iter()
                    .filter_map(|(a, b, n)| {
                        if **from == **a {
                            Some((b.as_str().into(), *n, 0))
                        } else if **from == **b {
                            Some((a.as_str().into(), *n, 0))
                        } else {
                            None
                        }
                    })
                    .collect();
                to.sort_by(|x, y| x.1.cmp(&y.1).then(x.0.cmp(&y.0)));
                let mut rank = 0;
                let mut last = None;
                for t in &mut to {
                    if last != Some(t.1) {
                        rank += 1;
                        last = Some(t.1);
                    }
                    t.2 = rank;
                }
                (from.clone(), to)
            })
            .collect();
        Ok(Regions {
            known,
            aliases: alias_list,
            countries: country_list,
            near,
        })
    }

    /// Whether `region` (lower-case) is a known region code.
    pub fn is_known(&self, region: &str) -> bool {
        self.known.binary_search_by(|k| (**k).cmp(region)).is_ok()
    }

    /// The known region codes, sorted.
    pub fn known(&self) -> impl Iterator<Item = &str> {
        self.known.iter().map(|r| &**r)
    }

    /// The region a code stands for, case-insensitively: a region itself, or a finer code
    /// (`GRU` → `sa`, with its country `BR`). An error an operator can act on otherwise.
    pub fn resolve(&self, code: &str) -> Result<(&str, Option<Country>), String> {
        let lower = code.trim().to_ascii_lowercase();
        if let Ok(i) = self.known.binary_search_by(|k| (**k).cmp(&lower)) {
            return Ok((&self.known[i], None));
        }
        if let Ok(i) = self.aliases.binary_search_by(|a| (*a.0).cmp(&lower)) {
            let (_, region, cc) = &self.aliases[i];
            return Ok((region, *cc));
        }
        let mut msg = format!(
            "unknown region '{}': known regions are {}",
            code.trim(),
            join(&self.known)
        );
        let _ = write!(
            msg,
            "; POP codes such as gru, iad, fra, nrt map to theirs (add regions with \
             --region-distances, codes with --region-alias)"
        );
        Err(msg)
    }

    /// The region of a country's clients, if the table has one.
    pub fn of_country(&self, cc: Country) -> Option<&str> {
        self.countries
            .binary_search_by_key(&cc, |(c, _)| *c)
            .ok()
            .map(|i| &*self.countries[i].1)
    }

    /// How near `to` is to `from`: 1 for the nearest other region(s), 2 for the next… `None`
    /// when either is unknown or they are the same.
    #[inline]
    pub fn near_rank(&self, from: &str, to: &str) -> Option<u32> {
        self.nearest(from)
            .iter()
            .find(|(r, _, _)| **r == *to)
            .map(|(_, _, rank)| *rank)
    }

    /// The other regions from `from`, nearest first: (region, distance, rank).
    pub fn nearest(&self, from: &str) -> &[Neighbour] {
        self.near
            .iter()
            .find(|(f, _)| **f == *from)
            .map(|(_, to)| to.as_slice())
            .unwrap_or(&[])
    }

    /// The largest rank from `from` (0 when it has no neighbours).
    pub fn max_rank(&self, from: &str) -> u32 {
        self.nearest(from).last().map_or(0, |t| t.2)
    }
}

fn join(list: &[Box<str>]) -> String {
    list.iter().map(|r| &**r).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_tables() {
        let r = Regions::default();
        assert_eq!(r.known().collect::<Vec<_>>(), ["ap", "eu", "sa", "us"]);
        assert_eq!(r.resolve("SA").unwrap(), ("sa", None));
        assert_eq!(
            r.resolve("GRU").unwrap(),
            ("sa", Some(Country::parse("BR").unwrap()))
        );
        assert_eq!(r.resolve("fra").unwrap().0, "eu");
        assert_eq!(r.resolve("iad").unwrap().0, "us");
        assert_eq!(r.resolve("nrt").unwrap().0, "ap");
        let e = r.resolve("ue").unwrap_err();
        assert!(
            e.contains("unknown region 'ue'") && e.contains("ap, eu, sa, us"),
            "{e}"
        );
        assert_eq!(r.of_country(Country::parse("br").unwrap()), Some("sa"));
        assert_eq!(r.of_country(Country::parse("DE").unwrap()), Some("eu"));
        assert_eq!(r.of_country(Country::parse("XX").unwrap()), None);
        // From sa: us, then eu, then ap.
        let order: Vec<_> = r.nearest("sa").iter().map(|t| (&*t.0, t.2)).collect();
        assert_eq!(order, [("us", 1), ("eu", 2), ("ap", 3)]);
        assert_eq!(r.near_rank("eu", "us"), Some(1));
        assert_eq!(r.near_rank("eu", "eu"), None);
        assert_eq!(r.near_rank("mars", "eu"), None);
        assert_eq!(r.max_rank("ap"), 3);
        // Every built-in alias and country points at a known region.
        for (c, region, cc) in ALIASES {
            assert!(r.is_known(region), "{c}");
            assert!(Country::parse(cc).is_some(), "{c}");
        }
        for (cc, region) in COUNTRIES {
            assert!(r.is_known(region), "{cc}");
        }
    }

    #[test]
    fn configured_tables_override_and_refuse_unknowns() {
        let d = parse_distance("us-af=90").unwrap();
        let a = parse_alias("jnb=AF:za").unwrap();
        let c = parse_country_region("ng=af").unwrap();
        let r = Regions::configure(&[d, parse_distance("sa:eu=100").unwrap()], &[a], &[c]).unwrap();
        assert!(r.is_known("af"));
        assert_eq!(
            r.resolve("JNB").unwrap(),
            ("af", Some(Country::parse("ZA").unwrap()))
        );
        assert_eq!(r.of_country(Country::parse("NG").unwrap()), Some("af"));
        // sa-eu now 100 < sa-us 120.
        assert_eq!(r.near_rank("sa", "eu"), Some(1));
        assert_eq!(r.near_rank("sa", "us"), Some(2));
        assert_eq!(r.near_rank("af", "us"), Some(1));
        assert!(Regions::configure(&[], &[parse_alias("x1=mars").unwrap()], &[]).is_err());
        assert!(Regions::configure(&[], &[parse_alias("sa=eu").unwrap()], &[]).is_err());
        assert!(Regions::configure(&[], &[], &[parse_country_region("BR=zz").unwrap()]).is_err());
        for bad in ["sa-us", "sa=1", "sa-sa=1", "sa-us=x", "s-us=1"] {
            assert!(parse_distance(bad).is_err(), "{bad}");
        }
        for bad in ["gru", "gru=sa:BRA", "g=sa"] {
            assert!(parse_alias(bad).is_err(), "{bad}");
        }
        for bad in ["BR", "BRA=sa", "BR=s"] {
            assert!(parse_country_region(bad).is_err(), "{bad}");
        }
    }
}
