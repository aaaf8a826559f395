//! Differential check of every candidate against serde_json's own verdict, on
//! documents built from valid seeds by random mutations (the same generator as the
//! host's unit test, more rounds): `cargo run --release -- [ROUNDS]`.

use plugbay_validator_bench::{serde_json_verdict, CANDIDATES};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const PIECES: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b":",
    b"\"",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"\\udc00",
    b"\\ud800\\udc00",
    b"\\ud800\\u0041",
    b"\\uD83D\\uDE00",
    b"\\x",
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"1.",
    b".5",
    b"01",
    b"-",
    b"1e",
    b"1E+",
    b"0x1",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"NaN",
    b"Infinity",
    b"nul",
    b"true",
    b"null",
    b"\xff",
    b"\xc3",
    b"\xc3\xa9",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xf0\x9f\x98\x80",
    b"\xf4\x90\x80\x80",
    b"\xc0\xaf",
    b"\x00",
    b"\x1f",
    b"\x7f",
    b"\x0c",
    b"\x0b",
    b" ",
    b"\n",
    b"\t",
    b"\r",
    b"\xc2\xa0",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
];

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(bytes.len() + 1);
        match rng.below(6) {
            0 if !bytes.is_empty() => {
                let at = at.min(bytes.len() - 1);
                bytes[at] = rng.next() as u8;
            }
            1 if !bytes.is_empty() => {
                let end = (at + 1 + rng.below(4)).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            2 => {
                let end = (at + rng.below(16)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = rng.below(bytes.len() + 1);
                bytes.splice(to..to, copy);
            }
            _ => {
                let piece = PIECES[rng.below(PIECES.len())];
                bytes.splice(at..at, piece.iter().copied());
            }
        }
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|arg| arg.parse().expect("ROUNDS is a number"))
        .unwrap_or(400_000);
    let mut seeds: Vec<Vec<u8>> = vec![
        plugbay_validator_bench::data_processor_output(2),
        b"[]".to_vec(),
        br#" [ 1 , -2.5e-3 , 1E+2 , 0 , -0 , 18446744073709551615 , -9223372036854775808 ] "#
            .to_vec(),
        br#"[null,true,false,"",{},[],[[]],{"":{}}]"#.to_vec(),
        r#"["\"\\\/\b\f\n\r\t","\u00e9\u20AC\ud83d\ude00","é€😀"]"#
            .as_bytes()
            .to_vec(),
        br#"[{"a":[{"b":[{"c":[1,2,{"d":"e"}]}]}]}]"#.to_vec(),
        b"[\n\t\r 1\n]\n".to_vec(),
    ];
    for depth in [126, 127] {
        seeds.push(format!("[{}{}]", "[".repeat(depth), "]".repeat(depth)).into_bytes());
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut disagreements = vec![(0usize, None::<Vec<u8>>); CANDIDATES.len()];
    let (mut accepted, mut refused) = (0usize, 0usize);
    for round in 0..rounds {
        let mut bytes = seeds[round % seeds.len()].clone();
        if round >= seeds.len() {
            mutate(&mut rng, &mut bytes);
        }
        let expected = serde_json_verdict(&bytes);
        if expected.is_some() {
            accepted += 1;
        } else {
            refused += 1;
        }
        for ((_, validator), (count, example)) in CANDIDATES.iter().zip(&mut disagreements) {
            if validator(&bytes).ok() != expected {
                *count += 1;
                if example.as_ref().is_none_or(|old| old.len() > bytes.len()) {
                    *example = Some(bytes.clone());
                }
            }
        }
    }
    println!("{rounds} documents: serde_json accepts {accepted}, refuses {refused}\n");
    println!("| validator | disagreements with serde_json | shortest example |");
    println!("|---|---:|---|");
    for ((name, _), (count, example)) in CANDIDATES.iter().zip(&disagreements) {
        let example = example.as_ref().map_or(String::new(), |bytes| {
            let verdict = serde_json_verdict(bytes);
            format!("`{}` (serde_json: {verdict:?})", bytes.escape_ascii())
        });
        println!("| {name} | {count} | {example} |");
    }
}
