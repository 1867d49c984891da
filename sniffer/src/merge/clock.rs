//! Each host's clock offset from the exchanges seen on two hosts, by causality alone (as NTP
//! bounds an offset from a round trip): a server cannot have read the last byte of a request
//! before its client wrote it, nor a client the last byte of a response before its server
//! wrote it.
//!
//! With `θ` a host's clock minus true time, for a client on host C and its server on S:
//! `θS − θC ≤ s_req − c_req` (request, last bytes) and `θS − θC ≥ s_resp − c_resp`
//! (response). Every exchange between two hosts narrows the interval; its middle is the
//! estimate, its half width the uncertainty. Kernel times are taken at syscall exits, so on a
//! fast link the two bounds can cross by the microseconds between a write's data reaching the
//! peer and the write returning: then the estimate is still the middle, and the uncertainty
//! the half of the overlap.

/// One exchange seen from both ends on two hosts, times in each host's own clock (ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub client_host: usize,
    pub server_host: usize,
    /// The request's last byte: (client wrote, server read).
    pub request: (i128, i128),
    /// The response's last byte: (server wrote, client read), when both saw it.
    pub response: Option<(i128, i128)>,
}

/// What is known of `θB − θA` for two hosts A < B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bounds {
    lo: Option<i128>,
    hi: Option<i128>,
    samples: usize,
}

impl Bounds {
    /// The estimate and its uncertainty (None: one side only); whether the bounds crossed.
    fn estimate(&self) -> (i128, Option<i128>, bool) {
        match (self.lo, self.hi) {
            (Some(lo), Some(hi)) => ((lo + hi).div_euclid(2), Some((hi - lo).abs() / 2), lo > hi),
            (Some(b), None) | (None, Some(b)) => (b, None, false),
            (None, None) => (0, None, false),
        }
    }
}

/// One host's clock against the reference host's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offset {
    /// This host's clock minus the reference's, ns: subtract it from its times.
    pub ns: i128,
    /// Half the width of what causality allows (summed along the chain of hosts); None when
    /// only one bound is known, or nothing at all.
    pub uncertainty_ns: Option<i128>,
    /// The host whose exchanges with this one gave the offset (None: the reference, or no
    /// exchange with any host that has one).
    pub against: Option<usize>,
    /// Exchanges the offset comes from.
    pub samples: usize,
    /// The two bounds crossed (see the module comment).
    pub crossed: bool,
}

impl Offset {
    const NONE: Self = Self {
        ns: 0,
        uncertainty_ns: None,
        against: None,
        samples: 0,
        crossed: false,
    };
}

/// Offsets of `hosts` hosts against `reference`, from the samples between them. A host with
/// no exchange (through any chain of hosts) with the reference keeps its clock (offset 0,
/// `against` None).
pub fn estimate(hosts: usize, reference: usize, samples: &[Sample]) -> Vec<Offset> {
    // Bounds on θB − θA for every pair A < B.
    let mut pairs: std::collections::BTreeMap<(usize, usize), Bounds> = Default::default();
    for s in samples {
        let (c, h) = (s.client_host, s.server_host);
        if c == h || c >= hosts || h >= hosts {
            continue;
        }
        // δ = θS − θC ≤ s_req − c_req, and δ ≥ s_resp − c_resp.
        let hi = s.request.1 - s.request.0;
        let lo = s.response.map(|(wrote, read)| wrote - read);
        // Seen from the pair (min, max): flip when the client is the larger index.
        let (key, lo, hi) = if c < h {
            ((c, h), lo, Some(hi))
        } else {
            ((h, c), Some(-hi), lo.map(|l| -l))
        };
        let b = pairs.entry(key).or_insert(Bounds {
            lo: None,
            hi: None,
            samples: 0,
        });
        b.samples += 1;
        if let Some(lo) = lo {
            b.lo = Some(b.lo.map_or(lo, |x| x.max(lo)));
        }
        if let Some(hi) = hi {
            b.hi = Some(b.hi.map_or(hi, |x| x.min(hi)));
        }
    }
    let mut out = vec![Offset::NONE; hosts];
    if reference >= hosts {
        return out;
    }
    // Grow from the reference, always by the pair that adds the least uncertainty (a one-sided
    // pair counts as far worse than any two-sided one).
    let cost = |u: Option<i128>| u.map_or(i128::MAX / 4, |u| u);
    let mut done = vec![false; hosts];
    let mut total = vec![0i128; hosts];
    done[reference] = true;
    out[reference] = Offset {
        uncertainty_ns: Some(0),
        ..Offset::NONE
    };
    loop {
        let mut best: Option<(i128, usize, usize)> = None;
        for (&(a, b), bounds) in &pairs {
            let (from, to) = match (done[a], done[b]) {
                (true, false) => (a, b),
                (false, true) => (b, a),
                _ => continue,
            };
            let (_, u, _) = bounds.estimate();
            let c = total[from].saturating_add(cost(u));
            if best.is_none_or(|(bc, _, _)| c < bc) {
                best = Some((c, from, to));
            }
        }
        let Some((c, from, to)) = best else { break };
        let key = (from.min(to), from.max(to));
        let bounds = pairs[&key];
        let (delta, u, crossed) = bounds.estimate();
        // delta is θmax − θmin.
        let step = if from < to { delta } else { -delta };
        out[to] = Offset {
            ns: out[from].ns + step,
            uncertainty_ns: out[from].uncertainty_ns.zip(u).map(|(a, b)| a + b),
            against: Some(from),
            samples: bounds.samples,
            crossed,
        };
        total[to] = c;
        done[to] = true;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = 1_000_000_000;

    /// A call from host `c` to host `s`: true times of the request's and response's last
    /// bytes written and read, and both hosts' clock offsets.
    fn call(c: usize, s: usize, theta: &[i128], req: (i128, i128), resp: (i128, i128)) -> Sample {
        Sample {
            client_host: c,
            server_host: s,
            request: (req.0 + theta[c], req.1 + theta[s]),
            response: Some((resp.0 + theta[s], resp.1 + theta[c])),
        }
    }

    #[test]
    fn one_exchange_bounds_the_offset_by_its_round_trip() {
        // Host 1 is 5 s ahead. The request arrives 100 µs after it is sent, the answer 300 µs
        // after it; the server spends 1 ms in between.
        let theta = [0, 5 * S];
        let t = 100 * S;
        let s = call(
            0,
            1,
            &theta,
            (t, t + 100_000),
            (t + 1_100_000, t + 1_400_000),
        );
        let o = estimate(2, 0, &[s]);
        // θ1 − θ0 ∈ [5 s − 300 µs, 5 s + 100 µs]: middle 5 s − 100 µs, ± 200 µs.
        assert_eq!(o[1].ns, 5 * S - 100_000);
        assert_eq!(o[1].uncertainty_ns, Some(200_000));
        assert_eq!(
            (o[1].against, o[1].samples, o[1].crossed),
            (Some(0), 1, false)
        );
        assert_eq!(o[0].ns, 0);
        assert_eq!(o[0].uncertainty_ns, Some(0));
    }

    #[test]
    fn calls_both_ways_narrow_it_and_the_reference_can_be_either_host() {
        let theta = [0, -3 * S + 7];
        let t = 50 * S;
        let samples = [
            // Each way a request that takes 10 or 20 µs, an answer that takes 400 µs.
            call(0, 1, &theta, (t, t + 10_000), (t + 500_000, t + 900_000)),
            call(
                1,
                0,
                &theta,
                (t + S, t + S + 20_000),
                (t + S + 600_000, t + S + 1_000_000),
            ),
        ];
        let o = estimate(2, 0, &samples);
        // From 0 -> 1: δ ∈ [θ − 400 µs, θ + 10 µs]; from 1 -> 0: δ ∈ [θ − 20 µs, θ + 400 µs].
        // Together [θ − 20 µs, θ + 10 µs].
        assert_eq!(o[1].ns, theta[1] - 5_000);
        assert_eq!(o[1].uncertainty_ns, Some(15_000));
        assert_eq!(o[1].samples, 2);
        let o = estimate(2, 1, &samples);
        assert_eq!(o[0].ns, -(theta[1] - 5_000));
        assert_eq!(o[0].uncertainty_ns, Some(15_000));
    }

    #[test]
    fn crossed_bounds_give_the_middle_and_say_so() {
        // On one machine a read can return before the write that fed it: here 3 ns early.
        let s = Sample {
            client_host: 0,
            server_host: 1,
            request: (1_000, 997 + 2 * S),
            response: Some((2_000 + 2 * S, 1_998)),
        };
        let o = estimate(2, 0, &[s]);
        // hi = 2 s − 3 ns, lo = 2 s + 2 ns.
        assert_eq!(o[1].ns, 2 * S - 1);
        assert_eq!(o[1].uncertainty_ns, Some(2));
        assert!(o[1].crossed);
    }

    #[test]
    fn offsets_chain_through_hosts_and_uncertainties_add() {
        let theta = [0, 2 * S, -S];
        let t = 10 * S;
        let samples = [
            call(0, 1, &theta, (t, t + 1_000), (t + 5_000, t + 6_000)),
            call(1, 2, &theta, (t, t + 2_000), (t + 9_000, t + 12_000)),
        ];
        let o = estimate(3, 0, &samples);
        // 0 -> 1: [θ1 − 1 µs, θ1 + 1 µs]; 1 -> 2: δ = θ2 − θ1 ∈ [.. − 3 µs, .. + 2 µs].
        assert_eq!(o[1].ns, theta[1]);
        assert_eq!(o[1].uncertainty_ns, Some(1_000));
        assert_eq!(o[2].ns, theta[2] - 500);
        assert_eq!(o[2].uncertainty_ns, Some(1_000 + 2_500));
        assert_eq!(o[2].against, Some(1));
    }

    #[test]
    fn a_host_without_exchanges_keeps_its_clock_and_one_sided_bounds_have_no_uncertainty() {
        let s = Sample {
            client_host: 0,
            server_host: 1,
            request: (100, 400),
            response: None,
        };
        let o = estimate(3, 0, &[s]);
        assert_eq!((o[1].ns, o[1].uncertainty_ns), (300, None));
        assert_eq!(o[2], Offset::NONE);
        // Samples naming hosts that do not exist, or one host twice, are ignored.
        let odd = [
            Sample {
                client_host: 0,
                server_host: 7,
                ..s
            },
            Sample {
                client_host: 1,
                server_host: 1,
                ..s
            },
        ];
        assert_eq!(estimate(2, 0, &odd)[1], Offset::NONE);
        assert!(estimate(0, 0, &[s]).is_empty());
    }
}
