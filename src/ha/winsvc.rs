//! What a PostgreSQL Windows service runs, read from its command line (the
//! service's `BINARY_PATH_NAME`, what `sc qc NAME` shows): the directory
//! of its `pg_ctl.exe` and its data directory. `pg_ctl register` and the
//! PostgreSQL installer write it as
//! `"C:\…\bin\pg_ctl.exe" runservice -N "NAME" -D "C:\…\data" -w`, so an
//! `ha.toml` that names only the service needs no paths typed.
//!
//! Invariants: the command line is split the way Windows programs split
//! theirs (`CommandLineToArgvW`'s rules: quotes group, backslashes are
//! literal except before a quote); a service that does not run
//! `pg_ctl.exe runservice`, or names no data directory, is refused with the
//! reason, never guessed at. Pure parsing: reading the line from the
//! service manager is [`super::service`]'s.

use std::path::PathBuf;

/// The paths a PostgreSQL service's command line names.
#[cfg_attr(not(windows), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServicePaths {
    /// The directory of the service's `pg_ctl.exe` (`pg_bin`).
    pub pg_bin: PathBuf,
    /// Its `-D` / `--pgdata` (`pg_data`).
    pub pg_data: PathBuf,
}

/// Reads a service's command line (`BINARY_PATH_NAME`).
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) fn parse_command_line(line: &str) -> Result<ServicePaths, String> {
    let args = split(line);
    let program = args
        .first()
        .ok_or_else(|| "its command line is empty".to_owned())?;
    // Split on both separators: the line is a Windows path on any platform.
    let (dir, file) = match program.rfind(['\\', '/']) {
        Some(i) => (&program[..i], &program[i + 1..]),
        None => ("", program.as_str()),
    };
    if !file.eq_ignore_ascii_case("pg_ctl.exe") && !file.eq_ignore_ascii_case("pg_ctl") {
        return Err(format!(
            "it runs {program}, not PostgreSQL's pg_ctl.exe (a service made by `pg_ctl register` or the PostgreSQL installer)"
        ));
    }
    if dir.is_empty() {
        return Err(format!("it runs {program} without its directory"));
    }
    if !args.iter().any(|a| a == "runservice") {
        return Err("its pg_ctl.exe is not run as `runservice`".to_owned());
    }
    let mut data = None;
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        if arg == "-D" || arg == "--pgdata" {
            data = rest.next().cloned();
        } else if let Some(d) = arg.strip_prefix("--pgdata=") {
            data = Some(d.to_owned());
        } else if let Some(d) = arg.strip_prefix("-D") {
            data = Some(d.to_owned());
        }
    }
    let data = data
        .filter(|d| !d.is_empty())
        .ok_or_else(|| "its command line names no data directory (-D)".to_owned())?;
    Ok(ServicePaths {
        pg_bin: PathBuf::from(dir),
        pg_data: PathBuf::from(data),
    })
}

/// Splits a command line as `CommandLineToArgvW` does.
fn split(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        if chars.peek().is_none() {
            return args;
        }
        let mut arg = String::new();
        let mut quoted = false;
        let mut backslashes = 0usize;
        while let Some(&c) = chars.peek() {
            match c {
                '\\' => backslashes += 1,
                '"' => {
                    arg.extend(std::iter::repeat_n('\\', backslashes / 2));
                    if backslashes % 2 == 1 {
                        arg.push('"');
                    } else {
                        quoted = !quoted;
                    }
                    backslashes = 0;
                }
                ' ' | '\t' if !quoted => break,
                c => {
                    arg.extend(std::iter::repeat_n('\\', backslashes));
                    backslashes = 0;
                    arg.push(c);
                }
            }
            chars.next();
        }
        arg.extend(std::iter::repeat_n('\\', backslashes));
        args.push(arg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `sc qc NAME` prints holds the same line, as BINARY_PATH_NAME.
    fn parse_sc_qc(text: &str) -> Result<ServicePaths, String> {
        let line = text
            .lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == "BINARY_PATH_NAME").then(|| value.trim())
            })
            .ok_or_else(|| "no BINARY_PATH_NAME in the service's configuration".to_owned())?;
        parse_command_line(line)
    }

    fn paths(bin: &str, data: &str) -> ServicePaths {
        ServicePaths {
            pg_bin: PathBuf::from(bin),
            pg_data: PathBuf::from(data),
        }
    }

    #[test]
    fn reads_what_the_installer_and_pg_ctl_register_write() {
        let installer = r#""C:\Program Files\PostgreSQL\15\bin\pg_ctl.exe" runservice -N "postgresql-x64-15" -D "C:\Program Files\PostgreSQL\15\data" -w"#;
        assert_eq!(
            parse_command_line(installer),
            Ok(paths(
                r"C:\Program Files\PostgreSQL\15\bin",
                r"C:\Program Files\PostgreSQL\15\data"
            ))
        );
        let unquoted = r"D:\pg\bin\PG_CTL.EXE runservice -N kfpg -D D:\pg\data -w";
        assert_eq!(
            parse_command_line(unquoted),
            Ok(paths(r"D:\pg\bin", r"D:\pg\data"))
        );
        let joined = r#"D:\pg\bin\pg_ctl.exe runservice -N "a b" -D"E:\my data" -w"#;
        assert_eq!(
            parse_command_line(joined),
            Ok(paths(r"D:\pg\bin", r"E:\my data"))
        );
        let long = r"D:\pg\bin\pg_ctl.exe runservice --pgdata=E:\d -w";
        assert_eq!(parse_command_line(long), Ok(paths(r"D:\pg\bin", r"E:\d")));
    }

    #[test]
    fn reads_sc_qc_output() {
        let text = "[SC] QueryServiceConfig SUCCESS\r\n\r\n\
            SERVICE_NAME: postgresql-x64-15\r\n\
            \x20       TYPE               : 10  WIN32_OWN_PROCESS\r\n\
            \x20       START_TYPE         : 3   DEMAND_START\r\n\
            \x20       BINARY_PATH_NAME   : \"C:\\Program Files\\PostgreSQL\\15\\bin\\pg_ctl.exe\" runservice -N \"postgresql-x64-15\" -D \"C:\\Program Files\\PostgreSQL\\15\\data\" -w\r\n\
            \x20       DISPLAY_NAME       : postgresql-x64-15 - PostgreSQL Server 15\r\n\
            \x20       SERVICE_START_NAME : NT AUTHORITY\\NetworkService\r\n";
        assert_eq!(
            parse_sc_qc(text),
            Ok(paths(
                r"C:\Program Files\PostgreSQL\15\bin",
                r"C:\Program Files\PostgreSQL\15\data"
            ))
        );
        assert!(parse_sc_qc("[SC] OpenService FAILED 1060:\r\n")
            .unwrap_err()
            .contains("BINARY_PATH_NAME"));
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        let cases = [
            ("", "empty"),
            (r"C:\x\postgres.exe -D C:\d", "not PostgreSQL's pg_ctl.exe"),
            (r"pg_ctl.exe runservice -D C:\d", "without its directory"),
            (r"C:\pg\bin\pg_ctl.exe start -D C:\d", "runservice"),
            (
                r"C:\pg\bin\pg_ctl.exe runservice -N x -w",
                "no data directory",
            ),
            (r"C:\pg\bin\pg_ctl.exe runservice -D", "no data directory"),
        ];
        for (line, why) in cases {
            let e = parse_command_line(line).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn splits_like_windows() {
        assert_eq!(split(r#"a "b c" d"#), ["a", "b c", "d"]);
        assert_eq!(split(r#""a\"b" c\\d"#), ["a\"b", r"c\\d"]);
        assert_eq!(split(r#"x\\"y z""#), [r"x\y z"]);
        assert_eq!(split("  "), Vec::<String>::new());
    }
}
