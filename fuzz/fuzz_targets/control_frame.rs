//! Control frames from arbitrary bytes: `read_frame` for requests and responses, over the bytes as a stream
//! (read in chunks of a size the input picks, as a socket hands them out) and over the bytes as the JSON body
//! of a well-formed frame. What decodes must survive `write_frame` and decode to the same message.
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use shm_proto::control::{
    read_frame, write_frame, ControlError, Envelope, Request, Response, HEADER_LEN, MAGIC, VERSION,
};

/// Hands out at most `chunk` bytes per `read`, like a stream socket.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Every frame in `data`, until the first error; each one decoded is re-encoded and decoded again.
fn frames<T>(data: &[u8], chunk: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut r = Chunked { data, chunk };
    // A frame takes at least HEADER_LEN bytes, so this bounds the loop.
    for _ in 0..=data.len() / HEADER_LEN {
        match read_frame::<T>(&mut r) {
            Ok(env) => round_trip(&env),
            Err(ControlError::Closed) => return,
            Err(_) => return,
        }
    }
}

fn round_trip<T>(env: &Envelope<T>)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut wire = Vec::new();
    write_frame(&mut wire, env).expect("a decoded message encodes again");
    let again = read_frame::<T>(&mut wire.as_slice()).expect("an encoded message decodes");
    assert_eq!(&again, env);
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&MAGIC.to_le_bytes());
    frame.extend_from_slice(&VERSION.to_le_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(body);
    frame
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    // 1 to 16 bytes per read; 0 means all at once.
    let chunk = match first & 0x0F {
        0 => usize::MAX,
        n => usize::from(n),
    };
    frames::<Request>(rest, chunk);
    frames::<Response>(rest, chunk);
    let frame = framed(rest);
    frames::<Request>(&frame, chunk);
    frames::<Response>(&frame, chunk);
});
