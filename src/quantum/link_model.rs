//! Physical model of a QKD link: decoy-state BB84 with weak coherent pulses, asymptotic key
//! rate (GLLP with infinitely many decoys, as in Lo, Ma and Chen, PRL 94, 230504, 2005).
//!
//! Inputs are the fiber and detector parameters an engineer plans with; outputs are the QBER
//! and the secret key rate, with the signal intensity optimised for the link.

use serde::{Deserialize, Serialize};

/// Parameters of a fiber QKD link.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkParams {
    /// Fiber length in km.
    pub length_km: f64,
    /// Fiber attenuation in dB/km (0.2 for standard single-mode fiber at 1550 nm).
    pub attenuation_db_per_km: f64,
    /// Detection efficiency of Bob's detectors, including his optics (0..1).
    pub detector_efficiency: f64,
    /// Dark count probability per detector per pulse.
    pub dark_count_prob: f64,
    /// Optical misalignment error: probability that a photon hits the wrong detector.
    pub misalignment: f64,
    /// Error-correction inefficiency f >= 1 (1 is the Shannon limit).
    pub ec_efficiency: f64,
    /// Source pulse (clock) rate in Hz.
    pub pulse_rate_hz: f64,
}

impl Default for LinkParams {
    fn default() -> Self {
        Self {
            length_km: 50.0,
            attenuation_db_per_km: 0.2,
            detector_efficiency: 0.2,
            dark_count_prob: 1e-6,
            misalignment: 0.015,
            ec_efficiency: 1.16,
            pulse_rate_hz: 1e9,
        }
    }
}

/// Performance of a link as predicted by the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkPerformance {
    /// Quantum bit error rate of the signal states.
    pub qber: f64,
    /// Secret key bits per sent pulse (0 when no key survives).
    pub key_per_pulse: f64,
    /// Secret key rate in bit/s.
    pub secret_key_rate_bps: f64,
    /// Mean photon number of the signal state that maximises the key rate.
    pub mu: f64,
    /// Channel transmittance including detector efficiency.
    pub transmittance: f64,
}

/// Errors in link parameters.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("{0} must be {1}")]
    OutOfRange(&'static str, &'static str),
}

/// QBER above which BB84 (one-way post-processing) yields no key.
pub const BB84_QBER_LIMIT: f64 = 0.11;

fn h2(p: f64) -> f64 {
    if p <= 0.0 || p >= 1.0 {
        0.0
    } else {
        -p * p.log2() - (1.0 - p) * (1.0 - p).log2()
    }
}

impl LinkParams {
    /// Checks that every parameter is physically meaningful.
    pub fn validate(&self) -> Result<(), ModelError> {
        let checks = [
            (self.length_km >= 0.0, "length_km", ">= 0"),
            (
                self.attenuation_db_per_km >= 0.0,
                "attenuation_db_per_km",
                ">= 0",
            ),
            (
                self.detector_efficiency > 0.0 && self.detector_efficiency <= 1.0,
                "detector_efficiency",
                "in (0, 1]",
            ),
            (
                (0.0..0.5).contains(&self.dark_count_prob),
                "dark_count_prob",
                "in [0, 0.5)",
            ),
            (
                (0.0..=0.5).contains(&self.misalignment),
                "misalignment",
                "in [0, 0.5]",
            ),
            (self.ec_efficiency >= 1.0, "ec_efficiency", ">= 1"),
            (self.pulse_rate_hz > 0.0, "pulse_rate_hz", "> 0"),
        ];
        for (ok, name, range) in checks {
            if !ok || !ok_finite(self) {
                return Err(ModelError::OutOfRange(name, range));
            }
        }
        Ok(())
    }

    /// Channel transmittance times detector efficiency.
    pub fn transmittance(&self) -> f64 {
        self.detector_efficiency * 10f64.powf(-self.attenuation_db_per_km * self.length_km / 10.0)
    }

    /// (QBER, key bits per pulse) at signal intensity `mu`.
    fn rate_at(&self, mu: f64) -> (f64, f64) {
        let eta = self.transmittance();
        // Two detectors: background yield from dark counts, each click random (error 1/2).
        let y0 = 2.0 * self.dark_count_prob;
        let e0 = 0.5;
        let detect = 1.0 - (-eta * mu).exp();
        let q_mu = y0 + detect;
        let e_mu = (e0 * y0 + self.misalignment * detect) / q_mu;
        let y1 = y0 + eta;
        let q1 = y1 * mu * (-mu).exp();
        let e1 = (e0 * y0 + self.misalignment * eta) / y1;
        // Sifting factor 1/2 of standard BB84.
        let r = 0.5 * (q1 * (1.0 - h2(e1)) - q_mu * self.ec_efficiency * h2(e_mu));
        (e_mu, r.max(0.0))
    }

    /// Evaluates the link with the signal intensity optimised for key rate.
    pub fn evaluate(&self) -> Result<LinkPerformance, ModelError> {
        self.validate()?;
        let mut best = (0.5, self.rate_at(0.5));
        let mut mu = 0.01;
        while mu <= 1.0 + 1e-9 {
            let candidate = self.rate_at(mu);
            if candidate.1 > best.1 .1 {
                best = (mu, candidate);
            }
            mu += 0.005;
        }
        let (mu, (qber, key_per_pulse)) = best;
        Ok(LinkPerformance {
            qber,
            key_per_pulse,
            secret_key_rate_bps: key_per_pulse * self.pulse_rate_hz,
            mu,
            transmittance: self.transmittance(),
        })
    }
}

fn ok_finite(p: &LinkParams) -> bool {
    [
        p.length_km,
        p.attenuation_db_per_km,
        p.detector_efficiency,
        p.dark_count_prob,
        p.misalignment,
        p.ec_efficiency,
        p.pulse_rate_hz,
    ]
    .iter()
    .all(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_link_gives_realistic_rate() {
        let perf = LinkParams::default().evaluate().unwrap();
        // 50 km of fiber with a 1 GHz source: tens of kbit/s to a few Mbit/s is realistic.
        assert!(perf.secret_key_rate_bps > 1e4, "{perf:?}");
        assert!(perf.secret_key_rate_bps < 1e7, "{perf:?}");
        assert!(perf.qber > 0.01 && perf.qber < 0.05, "{perf:?}");
    }

    #[test]
    fn rate_falls_with_distance_and_vanishes() {
        let mut previous = f64::INFINITY;
        for km in [0.0, 25.0, 50.0, 100.0, 150.0] {
            let perf = LinkParams {
                length_km: km,
                ..Default::default()
            }
            .evaluate()
            .unwrap();
            assert!(perf.secret_key_rate_bps < previous);
            previous = perf.secret_key_rate_bps;
        }
        let far = LinkParams {
            length_km: 400.0,
            ..Default::default()
        }
        .evaluate()
        .unwrap();
        assert_eq!(far.secret_key_rate_bps, 0.0);
        assert!(far.qber > 0.1);
    }

    #[test]
    fn high_misalignment_kills_the_key() {
        let perf = LinkParams {
            misalignment: 0.15,
            ..Default::default()
        }
        .evaluate()
        .unwrap();
        assert_eq!(perf.key_per_pulse, 0.0);
        assert!(perf.qber > BB84_QBER_LIMIT);
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        let bad = LinkParams {
            detector_efficiency: 1.5,
            ..Default::default()
        };
        assert_eq!(
            bad.evaluate().unwrap_err(),
            ModelError::OutOfRange("detector_efficiency", "in (0, 1]")
        );
        let nan = LinkParams {
            length_km: f64::NAN,
            ..Default::default()
        };
        assert!(nan.evaluate().is_err());
    }
}
