//! Test-only fault injection between the LWT and the produce (`APP_COMMAND_API__FAULT`).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Answer 500 after the LWT, without producing: the batch stays pending.
    AbortAfterLwt,
    /// Abort the process after the LWT: a writer dying in the crash window.
    ExitAfterLwt,
}

impl Fault {
    pub fn parse(s: &str) -> Self {
        match s {
            "abort_after_lwt" => Fault::AbortAfterLwt,
            "exit_after_lwt" => Fault::ExitAfterLwt,
            _ => Fault::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_names_parse_and_default_to_none() {
        assert_eq!(Fault::parse("abort_after_lwt"), Fault::AbortAfterLwt);
        assert_eq!(Fault::parse("exit_after_lwt"), Fault::ExitAfterLwt);
        assert_eq!(Fault::parse("none"), Fault::None);
        assert_eq!(Fault::parse("garbage"), Fault::None);
    }
}
