//! What the suite does to the cluster: the kinds of fault, and how many trials of each a run makes.

use std::fmt;

/// A service of the stack; the cluster runs two instances of each (`<name>-1`, `<name>-2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    CommandApi,
    QueryApi,
    Projector,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::CommandApi => "command-api",
            Service::QueryApi => "query-api",
            Service::Projector => "projector",
        }
    }
}

/// One kind of fault. Each is applied while the load runs, then undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of one instance (1 and 2 alternately), then its restart.
    ServiceKill(Service),
    /// `kill -9` of the broker leading the most partitions of the events topic, then its restart.
    BrokerKill,
    /// `kill -9` of one Cassandra node (1, 2, 3 in turn), then its restart.
    CassandraKill,
    /// SIGSTOP of the broker leading the most partitions, longer than the session and request
    /// timeouts, then SIGCONT.
    BrokerPause,
    /// SIGSTOP of one Cassandra node, longer than the request timeouts, then SIGCONT.
    CassandraPause,
    /// Every broker stopped (SIGTERM) and started again, one after the other.
    RollingBrokers,
    /// Every Cassandra node stopped (SIGTERM) and started again, one after the other.
    RollingCassandra,
}

impl Fault {
    /// Every fault, in the order a run applies them.
    pub const ALL: [Fault; 9] = [
        Fault::ServiceKill(Service::CommandApi),
        Fault::ServiceKill(Service::QueryApi),
        Fault::ServiceKill(Service::Projector),
        Fault::BrokerKill,
        Fault::CassandraKill,
        Fault::BrokerPause,
        Fault::CassandraPause,
        Fault::RollingBrokers,
        Fault::RollingCassandra,
    ];

    /// The name used on the command line (`--only`) and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Fault::ServiceKill(Service::CommandApi) => "command-api-kill",
            Fault::ServiceKill(Service::QueryApi) => "query-api-kill",
            Fault::ServiceKill(Service::Projector) => "projector-kill",
            Fault::BrokerKill => "broker-kill",
            Fault::CassandraKill => "cassandra-kill",
            Fault::BrokerPause => "broker-pause",
            Fault::CassandraPause => "cassandra-pause",
            Fault::RollingBrokers => "broker-rolling",
            Fault::RollingCassandra => "cassandra-rolling",
        }
    }

    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name.trim())
    }

    /// Trials of the full plan.
    fn full_trials(self) -> usize {
        match self {
            Fault::ServiceKill(_) => 20,
            Fault::BrokerKill | Fault::CassandraKill => 5,
            Fault::BrokerPause
            | Fault::CassandraPause
            | Fault::RollingBrokers
            | Fault::RollingCassandra => 1,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The faults of a run and the trials of each, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<(Fault, usize)>,
}

impl Plan {
    /// Every fault: 20 kills of each service, 5 broker kills, 5 Cassandra node kills, the pauses
    /// and the rolling restarts once each.
    pub fn full() -> Self {
        Self {
            steps: Fault::ALL
                .into_iter()
                .map(|f| (f, f.full_trials()))
                .collect(),
        }
    }

    /// What CI runs: one kill of one instance of each service, one broker kill, one Cassandra
    /// node kill.
    pub fn ci() -> Self {
        Self {
            steps: vec![
                (Fault::ServiceKill(Service::CommandApi), 1),
                (Fault::ServiceKill(Service::QueryApi), 1),
                (Fault::ServiceKill(Service::Projector), 1),
                (Fault::BrokerKill, 1),
                (Fault::CassandraKill, 1),
            ],
        }
    }

    /// The same faults, `trials` of each.
    pub fn with_trials(mut self, trials: usize) -> Self {
        for step in &mut self.steps {
            step.1 = trials;
        }
        self
    }

    /// Only the faults named (in the plan's order).
    pub fn only(mut self, names: &[String]) -> anyhow::Result<Self> {
        let mut wanted = Vec::new();
        for name in names {
            match Fault::from_name(name) {
                Some(f) => wanted.push(f),
                None => anyhow::bail!(
                    "unknown fault {name:?}; known: {}",
                    Fault::ALL.map(Fault::name).join(", ")
                ),
            }
        }
        self.steps.retain(|(f, _)| wanted.contains(f));
        // A fault named but absent from the plan (CI plan, --only broker-pause): once.
        for f in wanted {
            if !self.steps.iter().any(|(g, _)| *g == f) {
                self.steps.push((f, 1));
            }
        }
        self.steps
            .sort_by_key(|(f, _)| Fault::ALL.iter().position(|g| g == f));
        Ok(self)
    }

    pub fn trials(&self) -> usize {
        self.steps.iter().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_plan_has_the_trial_counts_of_the_issue() {
        let plan = Plan::full();
        assert_eq!(plan.steps.len(), 9);
        assert_eq!(plan.trials(), 3 * 20 + 5 + 5 + 4);
    }

    #[test]
    fn trials_and_only_narrow_a_plan() {
        let plan = Plan::full()
            .with_trials(2)
            .only(&["broker-kill".into(), "command-api-kill".into()])
            .unwrap();
        assert_eq!(
            plan.steps,
            vec![
                (Fault::ServiceKill(Service::CommandApi), 2),
                (Fault::BrokerKill, 2)
            ]
        );
        assert!(Plan::ci().only(&["nope".into()]).is_err());
        assert_eq!(
            Plan::ci().only(&["broker-pause".into()]).unwrap().steps,
            vec![(Fault::BrokerPause, 1)]
        );
    }
}
