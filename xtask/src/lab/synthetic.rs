//! Synthetic images of any size, for measuring export and import throughput: a generated
//! rootfs streamed into `docker import`, half incompressible, half text.

use std::io::{self, Read, Write as _};
use std::process::Stdio;

use anyhow::{bail, Context as _};

use super::Engine;

const MIB: u64 = 1 << 20;

/// Streams a generated rootfs of `size` bytes into `docker import`: files of up to 64 MiB,
/// alternately incompressible (xorshift) and text (words drawn at random, which gzip
/// shrinks well), so that the layer is neither all compressible nor all random.
pub fn import_synthetic_image(engine: &Engine, image: &str, size: u64) -> anyhow::Result<()> {
    let mut child = engine
        .docker_command(["import", "-", image])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting docker import")?;
    let stdin = child.stdin.take().context("docker import has no stdin")?;
    let written = (|| -> anyhow::Result<()> {
        let mut tar = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, stdin));
        let file_size = (64 * MIB).min(size.div_ceil(8)).max(1);
        let mut left = size;
        let mut i = 0u64;
        while left > 0 {
            let len = file_size.min(left);
            let text = i % 2 == 1;
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_size(len);
            let path = if text {
                format!("data/text-{i:05}.txt")
            } else {
                format!("data/blob-{i:05}.bin")
            };
            let filler = Filler {
                state: 0x9E37_79B9_7F4A_7C15 ^ (i + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
                left: len,
                text,
            };
            tar.append_data(&mut header, path, filler)?;
            left -= len;
            i += 1;
        }
        tar.into_inner()?.flush()?;
        Ok(())
    })();
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "docker import of the synthetic image failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    written.context("writing the synthetic rootfs to docker import")
}

struct Filler {
    state: u64,
    left: u64,
    text: bool,
}

const WORDS: [&str; 32] = [
    "image", "layer", "cache", "build", "export", "import", "bundle", "docker", "engine",
    "offline", "server", "python", "node", "nginx", "wheel", "npm", "sha256", "manifest",
    "compose", "service", "context", "stage", "target", "digest", "verify", "stream", "archive",
    "backend", "frontend", "config", "volume", "network",
];

impl Filler {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl Read for Filler {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.left as usize);
        let buf = &mut buf[..n];
        if self.text {
            let mut i = 0;
            while i < n {
                let r = self.next();
                let word = WORDS[(r >> 59) as usize].as_bytes();
                let len = word.len().min(n - i);
                buf[i..i + len].copy_from_slice(&word[..len]);
                i += len;
                if i < n {
                    buf[i] = if r & 0xf == 0 { b'\n' } else { b' ' };
                    i += 1;
                }
                // a number now and then, as in logs and source files
                if r & 0x70 == 0 && i + 4 < n {
                    buf[i..i + 4].copy_from_slice(format!("{:04}", r % 10_000).as_bytes());
                    i += 4;
                }
            }
        } else {
            for chunk in buf.chunks_mut(8) {
                let bytes = self.next().to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn text_filler_compresses_and_random_does_not() {
        let mut text = Vec::new();
        Filler {
            state: 1,
            left: 1 << 16,
            text: true,
        }
        .read_to_end(&mut text)
        .unwrap();
        let mut random = Vec::new();
        Filler {
            state: 1,
            left: 1 << 16,
            text: false,
        }
        .read_to_end(&mut random)
        .unwrap();
        assert_eq!((text.len(), random.len()), (1 << 16, 1 << 16));
        let gz = |data: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(data).unwrap();
            e.finish().unwrap().len()
        };
        assert!(gz(&text) * 2 < text.len(), "text compresses: {}", gz(&text));
        assert!(gz(&random) > random.len() * 99 / 100);
    }
}
