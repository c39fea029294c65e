//! IPv4 address ranges (`10.96.0.0/16`): the Service range, the cluster's pod range and each
//! node's share of it. Parsed once, held as the network address and prefix length.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Kubernetes' default Service range.
pub const SERVICE_RANGE: Cidr = Cidr::fixed(Ipv4Addr::new(10, 96, 0, 0), 16);
/// The default cluster pod range (kubeadm's and flannel's).
pub const POD_RANGE: Cidr = Cidr::fixed(Ipv4Addr::new(10, 244, 0, 0), 16);
/// The prefix of each node's share of the pod range (kube-controller-manager's
/// `--node-cidr-mask-size`).
pub const NODE_PREFIX: u8 = 24;

/// An IPv4 range; the address is the network's (host bits cleared, as Go's `net.ParseCIDR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

/// Text that is no IPv4 range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is no IPv4 range such as 10.96.0.0/16")]
pub struct CidrError(String);

impl Cidr {
    /// The range of `addr` with `prefix` bits; `None` beyond 32.
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Option<Cidr> {
        if prefix > 32 {
            return None;
        }
        let network = Ipv4Addr::from_bits(addr.to_bits() & mask(prefix));
        Some(Cidr { network, prefix })
    }

    /// A range written in the code, known to be valid.
    pub const fn fixed(addr: Ipv4Addr, prefix: u8) -> Cidr {
        match Cidr::new(addr, prefix) {
            Some(c) => c,
            None => panic!("a prefix longer than 32 bits"),
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// How many addresses the range holds.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.to_bits() & mask(self.prefix) == self.network.to_bits()
    }

    /// The `n`th address of the range (0 is the network's own), if the range holds it.
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from_bits(self.network.to_bits() + n as u32))
    }

    /// The `index`th range of `prefix` bits inside this one (a node's share of the pod range).
    pub fn subnet(&self, prefix: u8, index: u64) -> Option<Cidr> {
        if prefix < self.prefix || prefix > 32 || index >= 1u64 << (prefix - self.prefix) {
            return None;
        }
        let offset = index << (32 - u32::from(prefix));
        Cidr::new(Ipv4Addr::from_bits(self.network.to_bits() + offset as u32), prefix)
    }
}

const fn mask(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - prefix as u32) }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(s.to_owned());
        let (ip, bits) = s.trim().split_once('/').ok_or_else(bad)?;
        let bits: u8 = bits.parse().map_err(|_| bad())?;
        Cidr::new(ip.parse().map_err(|_| bad())?, bits).ok_or_else(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_parse_contain_and_split() {
        let c: Cidr = "10.244.0.0/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.0.0/16");
        assert!(c.contains(Ipv4Addr::new(10, 244, 3, 4)));
        assert!(!c.contains(Ipv4Addr::new(10, 245, 0, 1)));
        assert_eq!(c.size(), 65_536);
        assert_eq!(c.subnet(24, 3).unwrap().to_string(), "10.244.3.0/24");
        assert_eq!(c.subnet(24, 256), None);
        assert_eq!(c.subnet(8, 0), None);
        assert_eq!(c.subnet(24, 3).unwrap().nth(1), Some(Ipv4Addr::new(10, 244, 3, 1)));
        assert_eq!(c.subnet(24, 3).unwrap().nth(256), None);
        assert_eq!(
            "10.96.0.7/16".parse::<Cidr>().unwrap().to_string(),
            "10.96.0.0/16",
            "host bits cleared"
        );
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(Ipv4Addr::new(1, 2, 3, 4)));
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "x/8", "10.0.0.0/-1", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn every_address_of_a_range_is_in_it(a in any::<u32>(), prefix in 0u8..=32, n in any::<u64>()) {
            let c = Cidr::new(Ipv4Addr::from_bits(a), prefix).unwrap();
            prop_assert!(c.contains(Ipv4Addr::from_bits(a)));
            if let Some(ip) = c.nth(n % (c.size() + 1)) {
                prop_assert!(c.contains(ip));
            }
            prop_assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c);
        }
    }
}
