//! Platforms as OCI names them (`linux/amd64`, `windows/amd64`, `darwin/arm64`), the
//! library file a manifest's `main` becomes on each, and what such a file starts with.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An operating system and a CPU architecture, written `os/arch` with OCI's (Go's)
/// names: `linux/amd64`, `linux/arm64`, `windows/amd64`, `darwin/arm64`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Platform {
    os: String,
    arch: String,
}

/// The operating systems a Plugbay plugin library is built for.
const OSES: &[&str] = &["linux", "windows", "darwin"];

/// The architectures (OCI's names).
const ARCHES: &[&str] = &["amd64", "arm64", "riscv64"];

/// Why a platform name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown platform `{given}`; write it as OCI does, `os/arch` with os one of {} and arch one of {}, e.g. `windows/amd64`", OSES.join(", "), ARCHES.join(", "))]
pub struct PlatformError {
    given: String,
}

impl Platform {
    /// The platform this host runs on (its libraries load here).
    pub fn current() -> Platform {
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            other => other,
        };
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        Platform {
            os: os.to_owned(),
            arch: arch.to_owned(),
        }
    }

    /// The operating system: `linux`, `windows` or `darwin`.
    pub fn os(&self) -> &str {
        &self.os
    }

    /// The architecture: `amd64`, `arm64` or `riscv64`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The file a bare `main` (`data_processor`) is on this platform:
    /// `libdata_processor.so`, `data_processor.dll`, `libdata_processor.dylib`. A
    /// `main` with a `.` or a `/` is used as written (its last component).
    pub fn library_file_name(&self, main: &str) -> String {
        if main.contains(['.', '/', '\\']) {
            return main.rsplit(['/', '\\']).next().unwrap_or(main).to_owned();
        }
        match self.os.as_str() {
            "windows" => format!("{main}.dll"),
            "darwin" => format!("lib{main}.dylib"),
            _ => format!("lib{main}.so"),
        }
    }

    /// Whether `bytes` start as this platform's libraries do (ELF, PE or Mach-O);
    /// `Err` says what they look like instead.
    pub fn check_format(&self, bytes: &[u8]) -> Result<(), String> {
        const ELF: &[u8] = b"\x7fELF";
        const PE: &[u8] = b"MZ";
        const MACHO: &[[u8; 4]] = &[
            [0xcf, 0xfa, 0xed, 0xfe],
            [0xce, 0xfa, 0xed, 0xfe],
            [0xca, 0xfe, 0xba, 0xbe],
        ];
        let is_macho = MACHO.iter().any(|magic| bytes.starts_with(magic));
        let found = if bytes.starts_with(ELF) {
            "an ELF file (linux)"
        } else if bytes.starts_with(PE) {
            "a PE file (windows)"
        } else if is_macho {
            "a Mach-O file (darwin)"
        } else {
            "not a library of any platform"
        };
        let expected = match self.os.as_str() {
            "windows" => bytes.starts_with(PE),
            "darwin" => is_macho,
            _ => bytes.starts_with(ELF),
        };
        if expected {
            Ok(())
        } else {
            Err(format!("it is {found}, not a {} library", self.os))
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(text: &str) -> Result<Platform, PlatformError> {
        let refused = || PlatformError {
            given: text.to_owned(),
        };
        let (os, arch) = text.split_once('/').ok_or_else(refused)?;
        if !OSES.contains(&os) || !ARCHES.contains(&arch) {
            return Err(refused());
        }
        Ok(Platform {
            os: os.to_owned(),
            arch: arch.to_owned(),
        })
    }
}

impl TryFrom<String> for Platform {
    type Error = PlatformError;

    fn try_from(text: String) -> Result<Platform, PlatformError> {
        text.parse()
    }
}

impl From<Platform> for String {
    fn from(platform: Platform) -> String {
        platform.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_read_and_print_as_oci_writes_them() {
        let windows: Platform = "windows/amd64".parse().unwrap();
        assert_eq!(windows.to_string(), "windows/amd64");
        assert_eq!(
            windows.library_file_name("data_processor"),
            "data_processor.dll"
        );
        let mac: Platform = "darwin/arm64".parse().unwrap();
        assert_eq!(mac.library_file_name("x"), "libx.dylib");
        assert_eq!(
            "linux/amd64"
                .parse::<Platform>()
                .unwrap()
                .library_file_name("x"),
            "libx.so"
        );
        let err = "win64".parse::<Platform>().unwrap_err().to_string();
        assert!(
            err.contains("`win64`") && err.contains("windows/amd64"),
            "{err}"
        );
        assert!("linux/x86_64".parse::<Platform>().is_err());
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        assert_eq!(Platform::current().to_string(), "linux/amd64");
    }

    #[test]
    fn a_library_of_another_platform_is_told_apart() {
        let windows: Platform = "windows/amd64".parse().unwrap();
        assert!(windows.check_format(b"MZ\x90\x00").is_ok());
        let err = windows.check_format(b"\x7fELF\x02").unwrap_err();
        assert!(err.contains("ELF") && err.contains("windows"), "{err}");
        let linux: Platform = "linux/amd64".parse().unwrap();
        assert!(linux.check_format(b"\x7fELF\x02").is_ok());
        assert!(linux.check_format(b"plain text").is_err());
    }
}
