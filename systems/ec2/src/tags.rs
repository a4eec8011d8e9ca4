//! The tags of a machine's instance: who launched it, running what.

/// The longest value EC2 accepts for a tag is 256 characters; `Name` is cut shorter.
const NAME_MAX: usize = 250;

/// bigmachine's flags that take no value (every other `--bigm.*` flag takes one): the facade
/// checks this list against its flags.
#[doc(hidden)]
pub const SWITCHES: [&str; 4] = [
    "--bigm.ec2-on-demand",
    "--bigm.ec2-spot-only",
    "--bigm.ec2-private-addresses",
    "--bigm.ec2-immortal",
];

/// The `Name` tag: `<user>:<binary>(<digest, 12 digits>) <args> (bigmachine)`, cut to 250
/// characters (on a character boundary). bigmachine's own flags are left out: tags are read by
/// anyone who can describe instances, and those flags can carry secrets (a presigned URL).
pub(crate) fn name_tag(user: &str, binary: &str, digest: &str, args: &[String]) -> String {
    let short = digest.get(..12).unwrap_or(digest);
    let mut name = format!("{user}:{binary}({short})");
    let mut args = args.iter().peekable();
    while let Some(arg) = args.next() {
        if arg.starts_with("--bigm.") {
            // Its value, when given apart.
            if !arg.contains('=') && !SWITCHES.contains(&arg.as_str()) {
                args.next_if(|v| !v.starts_with("--"));
            }
            continue;
        }
        name.push(' ');
        name.push_str(arg);
    }
    name.push_str(" (bigmachine)");
    if name.chars().count() > NAME_MAX {
        name = name.chars().take(NAME_MAX).collect();
    }
    name
}

/// Every tag of an instance: `Name`, `bigmachine=true`, the binary's digest, the machine's name,
/// then the user's.
pub(crate) fn tags(
    name: String,
    digest: &str,
    machine: &str,
    extra: &[(String, String)],
) -> Vec<(String, String)> {
    let mut tags = vec![
        ("Name".to_string(), name),
        ("bigmachine".to_string(), "true".to_string()),
        ("bigmachine:digest".to_string(), digest.to_string()),
        ("bigmachine:machine".to_string(), machine.to_string()),
    ];
    tags.extend(extra.iter().cloned());
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_says_who_ran_what() {
        let args = vec!["--nmach".to_string(), "4".to_string()];
        let digest = "0123456789abcdef".repeat(4);
        assert_eq!(
            name_tag("ada", "bigpi", &digest, &args),
            "ada:bigpi(0123456789ab) --nmach 4 (bigmachine)"
        );
    }

    #[test]
    fn bigmachine_flags_stay_out_of_the_name() {
        let args: Vec<String> = [
            "--bigm.ec2-bootstrap-url",
            "https://b/x?X-Amz-Signature=secret",
            "--nmach",
            "4",
            "--bigm.ec2-bootstrap-sha256=abcd",
            "--bigm.ec2-private-addresses",
            "--verbose",
            "--bigm.ec2-on-demand",
            "input.txt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let name = name_tag("ada", "bigpi", "ab", &args);
        assert_eq!(
            name,
            "ada:bigpi(ab) --nmach 4 --verbose input.txt (bigmachine)"
        );
    }

    #[test]
    fn a_long_name_is_cut_to_250_characters() {
        let args = vec!["é".repeat(400)];
        let name = name_tag("ada", "bigpi", "ab", &args);
        assert_eq!(name.chars().count(), 250);
        assert!(name.starts_with("ada:bigpi(ab) éé"));
    }

    #[test]
    fn bigmachine_tags_come_first_then_the_users() {
        let extra = vec![("team".to_string(), "genomics".to_string())];
        let t = tags("n".into(), "d", "m-1", &extra);
        let keys: Vec<_> = t.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "Name",
                "bigmachine",
                "bigmachine:digest",
                "bigmachine:machine",
                "team"
            ]
        );
    }
}
