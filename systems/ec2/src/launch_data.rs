//! An instance's launch data: a cloud-config that installs the machine's credentials, a boot
//! script that fetches the bootstrap and checks its digest, and a systemd unit that runs it (and,
//! unless the system is immortal, powers the instance off when it ends).
//!
//! Only this instance's own key and certificate travel here, with the cluster CA's certificate
//! to verify its peers; the CA's key never leaves the driver. Every path the boot script uses
//! comes from the unit's environment.

use std::fmt::Write;

/// Where machines keep their state on an instance.
pub const HOME: &str = "/var/lib/bigmachine";
/// The unit that runs the machine.
pub const UNIT: &str = "bigmachine.service";

/// What one instance's launch data says.
#[derive(Debug, Clone)]
pub struct LaunchData<'a> {
    /// The instance's credentials, PEM (its certificate, the CA's, its key).
    pub credentials: &'a str,
    /// Where to fetch the bootstrap from, and the digest it must have.
    pub bootstrap_url: &'a str,
    /// The hex SHA-256 the bootstrap must have.
    pub bootstrap_sha256: &'a str,
    /// The UDP port the machine serves on.
    pub port: u16,
    /// Processors the machine reports.
    pub maxprocs: u32,
    /// How long the machine waits for its first keepalive, in milliseconds.
    pub keepalive_ms: u64,
    /// Whether the instance outlives its machine process.
    pub immortal: bool,
}

/// The boot script: fetches the bootstrap, checks its digest, runs it in place of itself.
const BOOT_SCRIPT: &str = r#"#!/bin/sh
# Fetches the bigmachine bootstrap, checks its digest, and runs it as this instance's machine.
set -eu
mkdir -p "$BIGMACHINE_HOME" "$TMPDIR"
boot="$BIGMACHINE_HOME/ec2boot"
curl -fsS --globoff --retry 10 --retry-connrefused --retry-delay 2 --connect-timeout 10 --max-time 900 -o "$boot.partial" --url "$BIGMACHINE_BOOTSTRAP_URL"
echo "$BIGMACHINE_BOOTSTRAP_SHA256  $boot.partial" | sha256sum -c -
chmod 0755 "$boot.partial"
mv "$boot.partial" "$boot"
exec "$boot"
"#;

/// A value in a unit's `Environment=`: systemd expands `%` specifiers, so `%` is doubled.
fn unit_value(s: &str) -> String {
    s.replace('%', "%%")
}

impl LaunchData<'_> {
    /// The systemd unit of the machine.
    pub fn unit(&self) -> String {
        let mut unit = String::from(
            "[Unit]\nDescription=bigmachine machine\nWants=network-online.target\n\
             After=network-online.target\n[Service]\nType=exec\n",
        );
        let env = [
            ("BIGMACHINE_MODE", "machine".to_string()),
            ("BIGMACHINE_SYSTEM", "ec2".to_string()),
            ("BIGMACHINE_ADDR", format!("0.0.0.0:{}", self.port)),
            ("BIGMACHINE_HOME", HOME.to_string()),
            ("BIGMACHINE_CREDENTIALS", format!("{HOME}/credentials.pem")),
            ("BIGMACHINE_BINARY_STORE", format!("{HOME}/binaries")),
            ("BIGMACHINE_MAXPROCS", self.maxprocs.to_string()),
            ("BIGMACHINE_KEEPALIVE_MS", self.keepalive_ms.to_string()),
            ("BIGMACHINE_BOOTSTRAP_URL", unit_value(self.bootstrap_url)),
            (
                "BIGMACHINE_BOOTSTRAP_SHA256",
                self.bootstrap_sha256.to_string(),
            ),
            ("TMPDIR", format!("{HOME}/tmp")),
        ];
        for (k, v) in env {
            let _ = writeln!(unit, "Environment={k}={v}");
        }
        unit.push_str("ExecStart=/usr/local/bin/bigmachine-boot\n");
        unit.push_str("OOMScoreAdjust=1000\nLimitNOFILE=1048576\n");
        // The machine's output also goes to the console, where `get-console-output` finds why
        // a machine that never reached its driver ended.
        unit.push_str("StandardOutput=journal+console\nStandardError=journal+console\n");
        if !self.immortal {
            // The instance's shutdown behaviour is terminate: once its machine is gone, so is it.
            unit.push_str("ExecStopPost=/bin/sh -c 'sleep 10; systemctl poweroff'\n");
        }
        unit
    }

    /// The instance's user data: a `#cloud-config` document.
    pub fn user_data(&self) -> String {
        let mut out = String::from("#cloud-config\nwrite_files:\n");
        let files = [
            (
                format!("{HOME}/credentials.pem"),
                "0600",
                self.credentials.to_string(),
            ),
            (
                "/usr/local/bin/bigmachine-boot".to_string(),
                "0755",
                BOOT_SCRIPT.to_string(),
            ),
            (format!("/etc/systemd/system/{UNIT}"), "0644", self.unit()),
        ];
        for (path, mode, content) in files {
            let _ = writeln!(
                out,
                "  - path: {path}\n    permissions: '{mode}'\n    content: |"
            );
            for line in content.lines() {
                let _ = writeln!(out, "      {line}");
            }
        }
        out.push_str("runcmd:\n  - [systemctl, daemon-reload]\n");
        let _ = writeln!(out, "  - [systemctl, start, --no-block, {UNIT}]");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n\
                       -----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n";

    fn data(immortal: bool) -> LaunchData<'static> {
        LaunchData {
            credentials: PEM,
            bootstrap_url: "https://b.example/ec2boot?sig=a%2Fb",
            bootstrap_sha256: "ab",
            port: 443,
            maxprocs: 2,
            keepalive_ms: 300_000,
            immortal,
        }
    }

    #[test]
    fn golden_user_data() {
        let expected = "#cloud-config
write_files:
  - path: /var/lib/bigmachine/credentials.pem
    permissions: '0600'
    content: |
      -----BEGIN CERTIFICATE-----
      AAAA
      -----END CERTIFICATE-----
      -----BEGIN PRIVATE KEY-----
      BBBB
      -----END PRIVATE KEY-----
  - path: /usr/local/bin/bigmachine-boot
    permissions: '0755'
    content: |
      #!/bin/sh
      # Fetches the bigmachine bootstrap, checks its digest, and runs it as this instance's machine.
      set -eu
      mkdir -p \"$BIGMACHINE_HOME\" \"$TMPDIR\"
      boot=\"$BIGMACHINE_HOME/ec2boot\"
      curl -fsS --globoff --retry 10 --retry-connrefused --retry-delay 2 --connect-timeout 10 --max-time 900 -o \"$boot.partial\" --url \"$BIGMACHINE_BOOTSTRAP_URL\"
      echo \"$BIGMACHINE_BOOTSTRAP_SHA256  $boot.partial\" | sha256sum -c -
      chmod 0755 \"$boot.partial\"
      mv \"$boot.partial\" \"$boot\"
      exec \"$boot\"
  - path: /etc/systemd/system/bigmachine.service
    permissions: '0644'
    content: |
      [Unit]
      Description=bigmachine machine
      Wants=network-online.target
      After=network-online.target
      [Service]
      Type=exec
      Environment=BIGMACHINE_MODE=machine
      Environment=BIGMACHINE_SYSTEM=ec2
      Environment=BIGMACHINE_ADDR=0.0.0.0:443
      Environment=BIGMACHINE_HOME=/var/lib/bigmachine
      Environment=BIGMACHINE_CREDENTIALS=/var/lib/bigmachine/credentials.pem
      Environment=BIGMACHINE_BINARY_STORE=/var/lib/bigmachine/binaries
      Environment=BIGMACHINE_MAXPROCS=2
      Environment=BIGMACHINE_KEEPALIVE_MS=300000
      Environment=BIGMACHINE_BOOTSTRAP_URL=https://b.example/ec2boot?sig=a%%2Fb
      Environment=BIGMACHINE_BOOTSTRAP_SHA256=ab
      Environment=TMPDIR=/var/lib/bigmachine/tmp
      ExecStart=/usr/local/bin/bigmachine-boot
      OOMScoreAdjust=1000
      LimitNOFILE=1048576
      StandardOutput=journal+console
      StandardError=journal+console
      ExecStopPost=/bin/sh -c 'sleep 10; systemctl poweroff'
runcmd:
  - [systemctl, daemon-reload]
  - [systemctl, start, --no-block, bigmachine.service]
";
        assert_eq!(data(false).user_data(), expected);
    }

    #[test]
    fn an_immortal_instance_is_not_powered_off() {
        assert!(data(false).unit().contains("poweroff"));
        assert!(!data(true).unit().contains("poweroff"));
    }
}
