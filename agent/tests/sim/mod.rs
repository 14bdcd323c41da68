//! Random draws for simulated traffic, shared by the anomaly scenarios and the replay.

#![allow(dead_code)]

/// A Poisson draw of mean `lambda` (a normal approximation above 40).
pub fn poisson(rng: &mut fastrand::Rng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda > 40.0 {
        let z = gauss(rng);
        return (lambda + z * lambda.sqrt()).round().max(0.0) as u64;
    }
    let l = (-lambda).exp();
    let (mut k, mut p) = (0u64, 1.0);
    loop {
        p *= rng.f64();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

/// A standard normal draw (Box-Muller).
pub fn gauss(rng: &mut fastrand::Rng) -> f64 {
    let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
