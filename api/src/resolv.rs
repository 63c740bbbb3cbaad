//! resolv.conf as the node's resolver and a pod's see it: the DNS add-on reads the
//! node's upstream resolvers from it, the agent the node's search path and options for
//! pods with `dnsPolicy: Default`, and writes one per container pod.

use std::net::IpAddr;

/// The parts of a resolv.conf Kubernetes reads and writes (CRI's `DNSConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Reads `nameserver`, `search` (and the older `domain`) and `options` lines;
    /// comments and anything unreadable are skipped, as the C resolver does. The last
    /// `search`/`domain` line wins.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                        conf.nameservers.push(ip);
                    }
                }
                Some("search" | "domain") => {
                    conf.searches = words.map(|w| w.trim_end_matches('.').to_string()).collect();
                }
                Some("options") => conf.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        conf
    }

    /// The `ndots` option (the C resolver's default, 1, when absent).
    pub fn ndots(&self) -> usize {
        self.options
            .iter()
            .rev()
            .find_map(|o| o.strip_prefix("ndots:")?.parse().ok())
            .unwrap_or(1)
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if !self.searches.is_empty() {
            text.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for server in &self.nameservers {
            text.push_str(&format!("nameserver {server}\n"));
        }
        if !self.options.is_empty() {
            text.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_resolvers_read_and_renders_it_back() {
        let text = "# generated\nnameserver 10.0.0.2 # primary\nnameserver bogus\nnameserver fd00::53\ndomain old.example\nsearch corp.example. example.com\noptions ndots:2 timeout:1\n";
        let conf = ResolvConf::parse(text);
        assert_eq!(
            conf.nameservers,
            [
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fd00::53".parse().unwrap()
            ]
        );
        assert_eq!(conf.searches, ["corp.example", "example.com"]);
        assert_eq!(conf.options, ["ndots:2", "timeout:1"]);
        assert_eq!(conf.ndots(), 2);
        assert_eq!(ResolvConf::parse(&conf.render()), conf);
        assert_eq!(ResolvConf::default().ndots(), 1);
    }
}
