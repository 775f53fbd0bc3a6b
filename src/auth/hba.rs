//! `auth_hba_file`: a `pg_hba.conf`-style file that picks the
//! authentication method per connection type, database, user and client
//! address, as PgBouncer's `auth_type = hba` does. Sans-IO: parsing and
//! matching only.
//!
//! Supported: types `local`, `host`, `hostssl`, `hostnossl`; databases and
//! users `all`, `sameuser` (databases) or comma-separated names (quoted
//! names allowed; as in Postgres a quoted keyword is a name); addresses `all` or CIDR (`10.0.0.0/8`, `::1/128`, a
//! bare address meaning one host); methods `trust`, `reject`, `md5`,
//! `scram-sha-256`, without options. Anything else is refused with the
//! line's number, so that a file written for Postgres never silently
//! means less.

use std::net::IpAddr;

use crate::config::AuthType;

/// A parsed HBA file: its rules in order; the first that matches decides.
#[derive(Debug, Clone, Default)]
pub struct Hba {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    conn: ConnType,
    databases: Names,
    users: Names,
    address: Address,
    method: Method,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnType {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

#[derive(Debug, Clone)]
enum Names {
    All,
    List(Vec<Name>),
}

#[derive(Debug, Clone)]
enum Name {
    /// Unquoted `sameuser` in the database field.
    SameUser,
    /// A name (a quoted keyword is a name too).
    Is(String),
}

/// Which field a list of names is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Database,
    User,
}

#[derive(Debug, Clone, Copy)]
enum Address {
    All,
    Net(IpAddr, u8),
}

/// What a matching rule says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Authenticate this way.
    Auth(AuthType),
    /// Refuse the connection.
    Reject,
}

/// Who is connecting, as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The client's address; `None` on the Unix-domain socket.
    pub addr: Option<IpAddr>,
    /// Whether the connection is encrypted.
    pub tls: bool,
    /// The database the client asked for.
    pub database: &'a str,
    /// The user it logs in as.
    pub user: &'a str,
}

impl Hba {
    /// Parses the file's text; the error names the line.
    pub fn parse(text: &str) -> Result<Hba, String> {
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let words = split_words(line);
            if words.is_empty() {
                continue;
            }
            let rule = parse_rule(&words).map_err(|e| format!("line {}: {e}", i + 1))?;
            rules.push(rule);
        }
        Ok(Hba { rules })
    }

    /// The method of the first rule that matches `c`; `None` when none
    /// does (the connection is refused).
    pub fn method(&self, c: &Connection<'_>) -> Option<Method> {
        self.rules.iter().find(|r| r.matches(c)).map(|r| r.method)
    }
}

impl Rule {
    fn matches(&self, c: &Connection<'_>) -> bool {
        let conn = match (self.conn, c.addr) {
            (ConnType::Local, None) => true,
            (ConnType::Host, Some(_)) => true,
            (ConnType::HostSsl, Some(_)) => c.tls,
            (ConnType::HostNoSsl, Some(_)) => !c.tls,
            _ => false,
        };
        let database = match &self.databases {
            Names::All => true,
            Names::List(l) => l.iter().any(|d| match d {
                Name::SameUser => c.database == c.user,
                Name::Is(d) => d == c.database,
            }),
        };
        let user = match &self.users {
            Names::All => true,
            Names::List(l) => l.iter().any(|u| matches!(u, Name::Is(u) if u == c.user)),
        };
        let address = match (self.address, c.addr) {
            (Address::All, _) | (_, None) => true,
            (Address::Net(net, bits), Some(ip)) => in_net(ip, net, bits),
        };
        conn && database && user && address
    }
}

fn parse_rule(words: &[String]) -> Result<Rule, String> {
    let conn = match words[0].as_str() {
        "local" => ConnType::Local,
        "host" => ConnType::Host,
        "hostssl" => ConnType::HostSsl,
        "hostnossl" => ConnType::HostNoSsl,
        other => return Err(format!("unsupported connection type \"{other}\"")),
    };
    let fields = if conn == ConnType::Local { 4 } else { 5 };
    if words.len() < fields {
        return Err(format!("expected {fields} fields, found {}", words.len()));
    }
    let databases = names(&words[1], Field::Database)?;
    let users = names(&words[2], Field::User)?;
    let address = match conn {
        ConnType::Local => Address::All,
        _ => address(&words[3])?,
    };
    let method = method(&words[fields - 1])?;
    // Options (clientcert=, map=, ...) change what the rule demands;
    // read without them, the rule would mean less than it says.
    if words.len() > fields {
        return Err(format!(
            "options after the method are not supported: {}",
            words[fields..].join(" ")
        ));
    }
    Ok(Rule {
        conn,
        databases,
        users,
        address,
        method,
    })
}

/// A comma-separated list of names, read as Postgres does: only unquoted
/// words are keywords (`all` anywhere in the list means all), and a
/// quoted name may hold commas.
fn names(word: &str, field: Field) -> Result<Names, String> {
    let mut all = false;
    let mut list = Vec::new();
    for (name, quoted) in split_list(word) {
        // Postgres 16+ reads a name starting with '/' as a regular
        // expression, quoted or not: refused rather than taken literally.
        if name.starts_with('/') {
            return Err(format!("\"{name}\": regular expressions are not supported"));
        }
        if quoted {
            list.push(Name::Is(name));
            continue;
        }
        match (name.as_str(), field) {
            ("all", _) => all = true,
            ("sameuser", Field::Database) => list.push(Name::SameUser),
            ("samerole" | "samegroup" | "replication", Field::Database) => {
                return Err(format!("\"{name}\" is not supported"));
            }
            (n, _) if n.starts_with('@') => {
                return Err(format!("\"{name}\": file (@file) names are not supported"));
            }
            (n, Field::User) if n.starts_with('+') => {
                return Err(format!("\"{name}\": group (+name) users are not supported"));
            }
            _ => list.push(Name::Is(name)),
        }
    }
    Ok(if all { Names::All } else { Names::List(list) })
}

/// Splits a field on the commas outside double quotes; each name comes
/// without its quotes, and with whether any part of it was quoted.
fn split_list(word: &str) -> Vec<(String, bool)> {
    let mut list = Vec::new();
    let (mut name, mut quoted, mut inside) = (String::new(), false, false);
    for ch in word.chars() {
        match ch {
            '"' => {
                inside = !inside;
                quoted = true;
            }
            ',' if !inside => {
                list.push((std::mem::take(&mut name), quoted));
                quoted = false;
            }
            c => name.push(c),
        }
    }
    list.push((name, quoted));
    list
}

fn address(word: &str) -> Result<Address, String> {
    if word == "all" {
        return Ok(Address::All);
    }
    let (ip, bits) = match word.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits)),
        None => (word, None),
    };
    let bad = || {
        format!(
            "address \"{word}\": use all, an IP address or CIDR (host names, samehost and samenet are not supported)"
        )
    };
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(bad)?,
        None => max,
    };
    Ok(Address::Net(ip, bits))
}

fn method(word: &str) -> Result<Method, String> {
    Ok(match word {
        "trust" => Method::Auth(AuthType::Trust),
        "md5" => Method::Auth(AuthType::Md5),
        "scram-sha-256" => Method::Auth(AuthType::ScramSha256),
        "reject" => Method::Reject,
        other => {
            return Err(format!(
                "unsupported method \"{other}\" (trust, reject, md5, scram-sha-256)"
            ));
        }
    })
}

/// Whether `ip` is in `net`/`bits`. An IPv4 client also matches through
/// its IPv4-mapped IPv6 form, and the other way round: a client's mapped
/// address is taken as IPv4, and so is a mapped network of at least 96
/// prefix bits (`::ffff:10.0.0.0/104` is 10.0.0.0/8).
fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (net, bits) = match net {
        IpAddr::V6(v6) if bits >= 96 => v6
            .to_ipv4_mapped()
            .map_or((net, bits), |v4| (IpAddr::V4(v4), bits - 96)),
        _ => (net, bits),
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(bits.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Splits a line into fields on blanks, up to a `#` comment; double
/// quotes keep blanks, commas and `#` inside one field.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for ch in line.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                word.push(ch);
            }
            '#' if !quoted => break,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn<'a>(addr: Option<&str>, tls: bool, database: &'a str, user: &'a str) -> Connection<'a> {
        Connection {
            addr: addr.map(|a| a.parse().expect("ip")),
            tls,
            database,
            user,
        }
    }

    const FILE: &str = "\
# comment
local   all        all                     trust
hostssl all        all     0.0.0.0/0       scram-sha-256
host    pgbouncer  admin   127.0.0.1       md5   # console from here only
host    pgbouncer  all     all             reject
host    \"my db\",sameuser  bob,carol  10.1.0.0/16  md5
host    all        all     ::1/128         trust
host    all        all     10.0.0.0/8      scram-sha-256
";

    #[test]
    fn the_first_matching_rule_decides() {
        let hba = Hba::parse(FILE).expect("parses");
        let m = |c: Connection<'_>| hba.method(&c);
        let scram = Some(Method::Auth(AuthType::ScramSha256));
        let md5 = Some(Method::Auth(AuthType::Md5));
        let trust = Some(Method::Auth(AuthType::Trust));
        assert_eq!(m(conn(None, false, "app", "x")), trust, "local");
        assert_eq!(
            m(conn(Some("192.0.2.1"), true, "app", "x")),
            scram,
            "hostssl"
        );
        assert_eq!(m(conn(Some("127.0.0.1"), false, "pgbouncer", "admin")), md5);
        let other = conn(Some("127.0.0.2"), false, "pgbouncer", "admin");
        assert_eq!(m(other), Some(Method::Reject));
        assert_eq!(
            m(conn(Some("10.1.2.3"), false, "my db", "bob")),
            md5,
            "quoted"
        );
        assert_eq!(
            m(conn(Some("10.1.2.3"), false, "carol", "carol")),
            md5,
            "sameuser"
        );
        assert_eq!(
            m(conn(Some("10.1.2.3"), false, "app", "carol")),
            scram,
            "next rule"
        );
        assert_eq!(m(conn(Some("::1"), false, "app", "x")), trust, "v6");
        let mapped = conn(Some("::ffff:10.9.9.9"), false, "app", "x");
        assert_eq!(m(mapped), scram, "an IPv4-mapped client matches IPv4 rules");
        assert_eq!(
            m(conn(Some("192.0.2.1"), false, "app", "x")),
            None,
            "no rule"
        );
    }

    #[test]
    fn what_is_not_supported_is_refused_with_its_line() {
        let err = |text: &str| Hba::parse(text).expect_err(text);
        assert!(err("host all all 10.0.0.0/8 ident").starts_with("line 1: unsupported method"));
        assert!(err("\nhost all all db.example.com md5").starts_with("line 2: address"));
        assert!(err("host all +admins all md5").contains("group"));
        assert!(err("host replication all all md5").contains("replication"));
        assert!(err("host all all 10.0.0.0/33 md5").contains("address"));
        assert!(err("host all all md5").contains("expected 5 fields"));
        assert!(err("hostgssenc all all all md5").contains("connection type"));
    }

    /// Postgres 16+ reads a database or user name starting with '/' as a
    /// regular expression, quoted or not. Taken literally, `reject` for
    /// `/^ro_` rejected nobody and the next rule trusted `ro_reader`.
    #[test]
    fn regular_expression_names_are_refused() {
        let err = |text: &str| Hba::parse(text).expect_err(text);
        assert!(err("host all /^ro_ all reject\nhost all all all trust").contains("regular"));
        assert!(err("host /^secret all all reject").contains("regular"));
        assert!(err("host all \"/^ro_\" all reject").contains("regular"));
        assert!(err("host app,/^x all all md5").starts_with("line 1"));
    }

    /// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) counts its
    /// prefix in IPv6 bits: it holds 10.0.0.0/8, whichever form the
    /// client's address comes in (it matched 10.0.0.0 alone before).
    #[test]
    fn an_ipv4_mapped_network_keeps_its_prefix() {
        let hba =
            Hba::parse("host all all ::ffff:10.0.0.0/104 trust\nhost all all ::ffff:0:0/96 md5\n")
                .expect("parses");
        let m = |a: &str| hba.method(&conn(Some(a), false, "app", "x"));
        let trust = Some(Method::Auth(AuthType::Trust));
        let md5 = Some(Method::Auth(AuthType::Md5));
        assert_eq!(m("10.1.2.3"), trust);
        assert_eq!(m("::ffff:10.1.2.3"), trust);
        assert_eq!(
            m("192.0.2.1"),
            md5,
            "::ffff:0:0/96 holds every IPv4 address"
        );
        assert_eq!(m("::ffff:192.0.2.1"), md5);
        assert_eq!(m("2001:db8::1"), None);
    }

    /// Options after the method (`clientcert=verify-full`, `map=...`)
    /// change what a Postgres rule demands; pgtarn implements none, so a
    /// rule with any is refused rather than read as the bare method (a
    /// `trust clientcert=verify-full` line let anyone in before).
    #[test]
    fn options_after_the_method_are_refused() {
        let err = |text: &str| Hba::parse(text).expect_err(text);
        assert!(err("hostssl all all all trust clientcert=verify-full").starts_with("line 1:"));
        assert!(err("local all all scram-sha-256 map=omicron").contains("map=omicron"));
        assert!(err("host all all 10.0.0.0 255.0.0.0 md5").starts_with("line 1:"));
    }

    /// Keywords as Postgres reads them: only unquoted `all`/`sameuser`
    /// are keywords (a quoted one is a name), `all` counts in a comma
    /// list, a quoted name may hold a comma, and `samerole`/`samegroup`
    /// (role membership, which pgtarn does not know) are refused instead
    /// of being taken for a database of that name.
    #[test]
    fn keywords_and_quoted_names_follow_postgres() {
        let trust = Some(Method::Auth(AuthType::Trust));
        let m = |text: &str, db: &str, user: &str| {
            Hba::parse(text)
                .expect(text)
                .method(&conn(Some("10.0.0.1"), false, db, user))
        };
        assert_eq!(m("host \"sameuser\" all all trust", "bob", "bob"), None);
        assert_eq!(
            m("host \"sameuser\" all all trust", "sameuser", "bob"),
            trust
        );
        assert_eq!(m("host sameuser all all trust", "bob", "bob"), trust);
        assert_eq!(m("host app,all all all trust", "other", "bob"), trust);
        assert_eq!(m("host all bob,all all trust", "app", "carol"), trust);
        assert_eq!(m("host \"a,b\" all all trust", "a,b", "bob"), trust);
        assert_eq!(m("host \"a,b\" all all trust", "a", "bob"), None);
        assert_eq!(m("host all \"all\" all trust", "app", "bob"), None);
        let hash = "host \"db#1\" all all trust # a comment";
        assert_eq!(m(hash, "db#1", "bob"), trust, "# inside quotes is a name's");
        for kw in ["samerole", "samegroup"] {
            let err = Hba::parse(&format!("host {kw} all all trust")).expect_err(kw);
            assert!(err.contains(kw), "{err}");
        }
    }
}
