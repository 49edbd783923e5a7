//! CPython's `random.Random`, the generator lm-eval's few-shot sampler uses.

/// CPython's `random.Random` (MT19937 seeded through `init_by_array`), just enough of it to
/// draw the same few-shot examples as lm-eval.
pub struct PyRandom {
    state: [u32; MT_N],
    index: usize,
}

const MT_N: usize = 624;
const MT_M: usize = 397;

impl PyRandom {
    /// `random.Random(seed)` for a seed below 2^32.
    pub fn new(seed: u32) -> Self {
        let mut rng = PyRandom {
            state: [0; MT_N],
            index: MT_N,
        };
        rng.init_by_array(&[seed]);
        rng
    }

    fn init_genrand(&mut self, seed: u32) {
        self.state[0] = seed;
        for i in 1..MT_N {
            let prev = self.state[i - 1];
            self.state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = MT_N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let mt = &mut self.state;
        let (mut i, mut j) = (1, 0);
        for _ in 0..MT_N.max(key.len()) {
            let prev = mt[i - 1];
            mt[i] = (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= MT_N {
                mt[0] = mt[MT_N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..MT_N - 1 {
            let prev = mt[i - 1];
            mt[i] =
                (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= MT_N {
                mt[0] = mt[MT_N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
    }

    fn twist(&mut self) {
        let mt = &mut self.state;
        for k in 0..MT_N {
            let y = (mt[k] & 0x8000_0000) | (mt[(k + 1) % MT_N] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            mt[k] = mt[(k + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// The next 32 random bits (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `_randbelow_with_getrandbits(n)` for n < 2^32: rejection sampling on `n.bit_length()`
    /// bits.
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let bits = usize::BITS - n.leading_zeros();
        loop {
            let r = (self.next_u32() >> (32 - bits)) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// The indices `random.sample(range(n), k)` returns, in order (k <= n).
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        // CPython keeps a pool list when it is smaller than the hash set it would need.
        let mut set_size = 21;
        if k > 5 {
            let exponent = ((k * 3) as f64).ln() / 4f64.ln();
            set_size += 4usize.pow(exponent.ceil() as u32);
        }
        if n <= set_size {
            let mut pool: Vec<usize> = (0..n).collect();
            (0..k)
                .map(|i| {
                    let j = self.below(n - i);
                    let picked = pool[j];
                    pool[j] = pool[n - i - 1];
                    picked
                })
                .collect()
        } else {
            let mut picked = Vec::with_capacity(k);
            while picked.len() < k {
                let j = self.below(n);
                if !picked.contains(&j) {
                    picked.push(j);
                }
            }
            picked
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values printed by CPython 3 (`random.Random(1234)`).
    #[test]
    fn py_random_matches_cpython() {
        let mut rng = PyRandom::new(1234);
        assert_eq!(
            [rng.next_u32(), rng.next_u32()],
            [4_150_886_329, 3_342_196_574]
        );
        let mut rng = PyRandom::new(1234);
        assert_eq!(rng.sample_indices(2251, 5), [1805, 478, 30, 371, 143]);
        assert_eq!(rng.sample_indices(2251, 5), [343, 403, 1452, 969, 71]);
        let mut rng = PyRandom::new(1234);
        assert_eq!(rng.sample_indices(10, 7), [7, 1, 0, 9, 4, 6, 5]);
        let mut rng = PyRandom::new(1234);
        let expected = [
            99, 56, 14, 0, 11, 74, 4, 85, 88, 10, 12, 45, 30, 2, 3, 86, 44, 82, 79, 61, 78, 59, 19,
            95, 23,
        ];
        assert_eq!(rng.sample_indices(100, 25), expected);
    }
}
