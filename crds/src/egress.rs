//! Where data planes may be told to send requests: pool endpoints (and their health checks,
//! on the same hosts) and Guardrail webhooks. The data plane sits inside the cluster, so a
//! namespace owner who could point it anywhere could reach what only the cluster reaches:
//! the cloud's metadata service (credentials), the API server, other tenants' services.
//!
//! With the restriction on (`--restrict-egress`), a URL whose host is a link-local or
//! metadata address is refused always, and one that is cluster-internal (loopback, private
//! and shared ranges, `localhost`, names under `.svc`, `.cluster.local`, `.internal` or
//! `.local`, and single-label names, which resolve through the cluster's search domains)
//! unless an allowed CIDR or host names it. Only what the URL says is checked here: a public
//! name that resolves to an internal address is a matter for DNS and the NetworkPolicy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::validate::InvalidField;

/// The egress restriction of a control plane (default: none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Egress {
    pub restrict: bool,
    /// Internal ranges allowed anyway, e.g. an in-cluster model server's.
    pub allow_cidrs: Vec<Cidr>,
    /// Internal host names allowed anyway: exact, or `*.suffix`.
    pub allow_hosts: Vec<String>,
}

/// An address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

/// Parsed from a flag (`--egress-allow-cidr`): clap shows the `String` as its error.
impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?} is not an address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse().map_err(|_| format!("{s:?}: bad prefix"))?
        };
        if prefix > max {
            return Err(format!("{s:?}: prefix longer than the address"));
        }
        Ok(Self { addr, prefix })
    }
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => prefix_eq(&a.octets(), &b.octets(), self.prefix),
            (IpAddr::V6(a), IpAddr::V6(b)) => prefix_eq(&a.octets(), &b.octets(), self.prefix),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = (usize::from(bits / 8), bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// Metadata services' well-known names and addresses (besides the link-local range).
const METADATA_HOSTS: &[&str] = &[
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
];

fn metadata_ip(ip: IpAddr) -> bool {
    match ip {
        // Link-local (AWS, GCP, Azure, OpenStack at 169.254.169.254), Alibaba's, Oracle's.
        IpAddr::V4(v4) => {
            v4.is_link_local()
                || v4 == Ipv4Addr::new(100, 100, 100, 200)
                || v4 == Ipv4Addr::new(192, 0, 0, 192)
        }
        // Link-local, and AWS's IPv6 metadata address.
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

fn internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 0
                // Shared address space (100.64.0.0/10): carrier-grade NAT, some clusters' pods.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xfe00) == 0xfc00
        }
    }
}

/// Whether a name is the cluster's: `localhost`, a single label, `<service>.<namespace>` of a
/// namespace the cluster has (the search domains complete it to a Service), or a name under
/// a cluster or private suffix.
fn internal_name(host: &str, namespaces: &dyn Fn(&str) -> bool) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = h.split('.').collect();
    h == "localhost"
        || labels.len() == 1
        || (labels.len() == 2 && namespaces(labels[1]))
        || [
            ".localhost",
            ".svc",
            ".cluster.local",
            ".internal",
            ".local",
        ]
        .iter()
        .any(|s| h.ends_with(s))
}

impl Egress {
    /// Checks the host of a URL (already parsed by `validate::endpoint_url`); `namespaces`
    /// says whether a name is one of the cluster's namespaces.
    pub fn check(
        &self,
        field: &str,
        url: &url::Url,
        namespaces: &dyn Fn(&str) -> bool,
    ) -> Result<(), InvalidField> {
        if !self.restrict {
            return Ok(());
        }
        let refuse = |why: &str| {
            Err(InvalidField::new(
                field.to_owned(),
                format!("{why}: refused by the control plane's egress restriction"),
            ))
        };
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            // IPv4 written inside IPv6 is the IPv4 address.
            Some(url::Host::Ipv6(v6)) => {
                Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
            }
            Some(url::Host::Domain(_)) => None,
            None => return refuse("no host"),
        };
        match ip {
            Some(ip) if metadata_ip(ip) => refuse("a link-local or metadata address"),
            Some(ip) if internal_ip(ip) && !self.allow_cidrs.iter().any(|c| c.contains(ip)) => {
                refuse("a cluster-internal address")
            }
            Some(_) => Ok(()),
            None => {
                let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
                let host = host.trim_end_matches('.');
                if METADATA_HOSTS.contains(&host) {
                    return refuse("a metadata service");
                }
                let allowed = self.allow_hosts.iter().any(|a| match a.strip_prefix("*.") {
                    Some(suffix) => host.ends_with(&format!(".{suffix}")),
                    None => a.eq_ignore_ascii_case(host),
                });
                if internal_name(host, namespaces) && !allowed {
                    return refuse("a cluster-internal name");
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(e: &Egress, u: &str) -> bool {
        let namespaces = |n: &str| n == "victim";
        e.check("url", &url::Url::parse(u).expect("url"), &namespaces)
            .is_ok()
    }

    #[test]
    fn metadata_and_internal_destinations_are_refused_when_restricted() {
        let open = Egress::default();
        assert!(check(&open, "http://169.254.169.254/latest/meta-data"));
        let e = Egress {
            restrict: true,
            allow_cidrs: vec!["10.20.0.0/16".parse().expect("cidr")],
            allow_hosts: vec![
                "vllm.models.svc.cluster.local".into(),
                "*.models.svc".into(),
            ],
        };
        for bad in [
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:169.254.169.254]/",
            "http://2852039166/",
            "http://[fd00:ec2::254]/",
            "http://metadata.google.internal/computeMetadata/v1",
            "http://100.100.100.200/",
            "http://127.0.0.1:8080/v1",
            "http://[::1]/",
            "http://10.0.0.5/v1",
            "http://192.168.1.10/",
            "http://172.16.0.1/",
            "http://localhost:8000/v1",
            "http://kubernetes.default.svc/api",
            "http://redis.evil.svc.cluster.local:6379",
            "http://redis/",
            "http://vllm.victim:8000/v1",
            "http://0.0.0.0/",
        ] {
            assert!(!check(&e, bad), "{bad}");
        }
        for good in [
            "https://api.openai.com/v1",
            "https://8.8.8.8/",
            "http://10.20.3.4:8000/v1",
            "http://vllm.models.svc.cluster.local:8000/v1",
            "http://qwen.models.svc/v1",
            "https://openai.com/v1",
        ] {
            assert!(check(&e, good), "{good}");
        }
        // Metadata stays refused even inside an allowed range.
        let wide = Egress {
            restrict: true,
            allow_cidrs: vec!["0.0.0.0/0".parse().expect("cidr")],
            allow_hosts: vec!["metadata.google.internal".into()],
        };
        assert!(!check(&wide, "http://169.254.169.254/"));
        assert!(!check(&wide, "http://metadata.google.internal/"));
    }
}
