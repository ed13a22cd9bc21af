// Micro benchmark: SRTP protect of one 1200-byte RTP packet with str0m 0.25 aws-lc-rs.
//
// Run: cargo run --release -p deadsfu-media --example srtp_bench. The same loop against str0m-openssl 0.6
// (str0m 0.24's OpenSSL backend) measured 310 ns (GCM) and 5050 ns (CM: 210 ns AES-CTR + 4700 ns HMAC,
// a new PKey and Signer per packet) on the same machine; see the rsa-dtls branch report.
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let p = str0m::crypto::from_feature_flags();
    bench(&p);
}

fn bench(p: &str0m::crypto::CryptoProvider) {
    let n = 200_000;
    let input = vec![0xabu8; 1188]; // payload after a 12-byte RTP header
    let mut out = vec![0u8; 1188 + 16];
    let hdr = [0x80u8; 12];
    // AES-128-GCM
    let mut gcm = p.srtp_provider.aead_aes_128_gcm().create_cipher([7u8; 16], true);
    let iv = [1u8; 12];
    for _ in 0..1000 {
        gcm.encrypt(&iv, &hdr, &input, &mut out).unwrap();
    }
    let t = Instant::now();
    for _ in 0..n {
        gcm.encrypt(black_box(&iv), &hdr, black_box(&input), &mut out).unwrap();
    }
    println!("aws-lc-rs AEAD_AES_128_GCM protect 1200 B: {:.0} ns/packet", t.elapsed().as_nanos() as f64 / n as f64);
    // AES-128-CM + HMAC-SHA1-80
    let mut cm = p.srtp_provider.aes_128_cm_sha1_80().create_cipher([7u8; 16], true);
    let iv16 = [1u8; 16];
    let hkey = [9u8; 20];
    let mut out2 = vec![0u8; 1188];
    let roc = 0u32.to_be_bytes();
    let t = Instant::now();
    for _ in 0..n {
        cm.encrypt(black_box(&iv16), black_box(&input), &mut out2).unwrap();
        let tag = p.sha1_hmac_provider.sha1_hmac(&hkey, &[&hdr[..], &out2[..], &roc[..]]);
        black_box(tag);
    }
    println!(
        "aws-lc-rs AES_CM_128_HMAC_SHA1_80 protect 1200 B: {:.0} ns/packet",
        t.elapsed().as_nanos() as f64 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        cm.encrypt(black_box(&iv16), black_box(&input), &mut out2).unwrap();
    }
    println!("aws-lc-rs   of which AES-128-CTR: {:.0} ns/packet", t.elapsed().as_nanos() as f64 / n as f64);
    let t = Instant::now();
    for _ in 0..n {
        black_box(p.sha1_hmac_provider.sha1_hmac(&hkey, &[&hdr[..], black_box(&out2[..]), &roc[..]]));
    }
    println!("aws-lc-rs   of which HMAC-SHA1: {:.0} ns/packet", t.elapsed().as_nanos() as f64 / n as f64);
}
