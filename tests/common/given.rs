//! Given/when/then for the pure `decide`: build a state from commands (or raw events), decide
//! one more command, and assert what it emits or why it is rejected.
//!
//! Include with `#[path = "common/given.rs"] mod given;`.
#![allow(dead_code)]

use pmmcp::commands::bootstrap::BootstrapServer;
use pmmcp::commands::nodes::AddNode;
use pmmcp::commands::register_node::RegisterNode;
use pmmcp::commands::services::AddService;
use pmmcp::commands::{Command, Ctx, ErrorClass, Rejection, decide};
use pmmcp::domain::settings::EnvSettings;
use pmmcp::domain::{
    Agent, AgentId, AgentType, Node, NodeId, NodeType, Service, ServiceId, ServiceType, State,
    Timestamp,
};
use pmmcp::events::Event;
use std::sync::Arc;

/// The fixed time every decision in these tests sees.
pub fn now() -> Timestamp {
    chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid time")
}

/// A state built from accepted commands, and the context the next decision gets.
pub struct Given {
    state: State,
    history: Vec<Event>,
    env: EnvSettings,
    seed: u128,
}

impl Given {
    /// Nothing recorded yet.
    pub fn empty() -> Self {
        Self {
            state: State::default(),
            history: Vec::new(),
            env: EnvSettings::default(),
            seed: 0,
        }
    }

    /// The PMM Server fixtures: node `pmm-server`, its pmm-agent and node_exporter.
    pub fn bootstrapped() -> Self {
        Self::empty().with(Command::BootstrapServer(BootstrapServer))
    }

    /// Settings pinned by environment variables for every later decision.
    pub fn env(mut self, env: EnvSettings) -> Self {
        self.env = env;
        self
    }

    /// Decides `cmd` and folds its events in; panics if it is rejected.
    pub fn with(mut self, cmd: Command) -> Self {
        self.run(cmd);
        self
    }

    /// Like [`Given::with`], returning the events.
    pub fn run(&mut self, cmd: Command) -> Vec<Event> {
        let ctx = self.ctx();
        let name = cmd.name();
        let events = decide(&self.state, &cmd, &ctx)
            .unwrap_or_else(|r| panic!("given {name} was rejected: {:?} {}", r.class, r.message()));
        for e in &events {
            self.apply(e.clone());
        }
        events
    }

    /// Folds a raw event in (for observations such as a pmm-agent's version).
    pub fn event(mut self, event: Event) -> Self {
        self.apply(event);
        self
    }

    fn apply(&mut self, event: Event) {
        let pos = self.state.revision + 1;
        self.state.apply_at(pos, &event);
        self.history.push(event);
    }

    fn ctx(&mut self) -> Ctx {
        self.seed += 1;
        let mut ctx = Ctx::fixed(now(), self.seed);
        ctx.env = Arc::new(self.env.clone());
        ctx
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The id of the last node added.
    pub fn node_id(&self) -> NodeId {
        self.history
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::NodeAdded { node } => Some(node.node_id.clone()),
                _ => None,
            })
            .expect("a node was added")
    }

    /// The id of the last service added.
    pub fn service_id(&self) -> ServiceId {
        self.history
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::ServiceAdded { service } => Some(service.service_id.clone()),
                _ => None,
            })
            .expect("a service was added")
    }

    /// The id of the last agent of type `t` added.
    pub fn agent_id(&self, t: AgentType) -> AgentId {
        self.history
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::AgentAdded { agent } if agent.agent_type == t => {
                    Some(agent.agent_id.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("an agent of type {} was added", t.as_str()))
    }

    pub fn node(&self, id: &NodeId) -> Node {
        (**self.state.nodes.get(id).expect("node exists")).clone()
    }

    pub fn agent(&self, id: &AgentId) -> Agent {
        (**self.state.agents.get(id).expect("agent exists")).clone()
    }

    /// Decides `cmd` against the given state.
    pub fn when(mut self, cmd: Command) -> Then {
        let ctx = self.ctx();
        let result = decide(&self.state, &cmd, &ctx);
        Then {
            name: cmd.name(),
            result,
            state: self.state,
        }
    }
}

/// The outcome of the decision under test.
pub struct Then {
    name: &'static str,
    result: Result<Vec<Event>, Rejection>,
    state: State,
}

impl Then {
    /// The events; panics if the command was rejected.
    pub fn accepted(self) -> Vec<Event> {
        match self.result {
            Ok(events) => events,
            Err(r) => panic!(
                "{} was rejected: {:?} {:?}",
                self.name,
                r.class,
                r.message()
            ),
        }
    }

    /// Asserts the rejection's class and that its message contains `fragment`.
    pub fn rejected(self, class: ErrorClass, fragment: &str) {
        match self.result {
            Ok(events) => panic!(
                "{} was accepted, expected {class:?} {fragment:?}; events: {:?}",
                self.name,
                types(&events)
            ),
            Err(r) => {
                assert_eq!(r.class, class, "{}: {:?}", self.name, r.message());
                assert!(
                    r.message().contains(fragment),
                    "{}: message {:?} does not contain {fragment:?}",
                    self.name,
                    r.message()
                );
            }
        }
    }

    /// Runs assertions on the events of an accepted command and returns them.
    pub fn emits(self, check: impl FnOnce(&[Event])) -> Vec<Event> {
        let events = self.accepted();
        check(&events);
        events
    }

    /// Asserts the event types, in order, and returns the events.
    pub fn emits_types(self, expected: &[&str]) -> Vec<Event> {
        self.emits(|events| assert_eq!(types(events), expected))
    }

    /// Asserts the command is accepted and changes nothing.
    pub fn emits_nothing(self) {
        self.emits_types(&[]);
    }

    /// The state after the accepted events.
    pub fn state_after(self) -> State {
        let mut state = self.state.clone();
        for e in self.accepted() {
            state.evolve(&e);
        }
        state
    }
}

/// Event type names, in order.
pub fn types(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::event_type).collect()
}

/// Each event as `Type:id` (agents also show their type), for checking cascade orders.
pub fn trail(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Event::NodeAdded { node } => format!("NodeAdded:{}", node.node_id),
            Event::NodeRemoved { node_id } => format!("NodeRemoved:{node_id}"),
            Event::ServiceAdded { service } => format!("ServiceAdded:{}", service.service_id),
            Event::ServiceChanged { service } => format!("ServiceChanged:{}", service.service_id),
            Event::ServiceRemoved { service_id } => format!("ServiceRemoved:{service_id}"),
            Event::AgentAdded { agent } => format!("AgentAdded:{}", agent.agent_id),
            Event::AgentChanged { agent } => format!("AgentChanged:{}", agent.agent_id),
            Event::AgentRemoved { agent_id } => format!("AgentRemoved:{agent_id}"),
            Event::SettingsChanged { .. } => "SettingsChanged".to_owned(),
            Event::TokenCreated { token } => format!("TokenCreated:{}", token.token_id),
            Event::TokenRevoked { token_id } => format!("TokenRevoked:{token_id}"),
            other => format!("{}:{}", other.event_type(), other.stream().stream_id()),
        })
        .collect()
}

pub fn nodes_added(events: &[Event]) -> Vec<Node> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::NodeAdded { node } => Some(node.clone()),
            _ => None,
        })
        .collect()
}

pub fn services_added(events: &[Event]) -> Vec<Service> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ServiceAdded { service } | Event::ServiceChanged { service } => {
                Some(service.clone())
            }
            _ => None,
        })
        .collect()
}

/// Agents added or changed, in order.
pub fn agents_added(events: &[Event]) -> Vec<Agent> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::AgentAdded { agent } | Event::AgentChanged { agent } => Some(agent.clone()),
            _ => None,
        })
        .collect()
}

/// The only node, service or agent an accepted command added.
pub fn the_node(events: &[Event]) -> Node {
    one(nodes_added(events))
}
pub fn the_service(events: &[Event]) -> Service {
    one(services_added(events))
}
pub fn the_agent(events: &[Event]) -> Agent {
    one(agents_added(events))
}

fn one<T: std::fmt::Debug>(mut v: Vec<T>) -> T {
    assert_eq!(v.len(), 1, "expected exactly one: {v:?}");
    v.remove(0)
}

/// The agent of type `t` among the events.
pub fn agent_of(events: &[Event], t: AgentType) -> Agent {
    one(agents_added(events)
        .into_iter()
        .filter(|a| a.agent_type == t)
        .collect())
}

// Command builders shared by the test files.

pub fn node(node_type: NodeType, name: &str, address: &str) -> AddNode {
    AddNode {
        node_type: Some(node_type),
        node_name: name.to_owned(),
        address: address.to_owned(),
        ..AddNode::default()
    }
}

pub fn generic(name: &str) -> Command {
    Command::AddNode(node(NodeType::Generic, name, &format!("{name}.example")))
}

pub fn register(name: &str) -> RegisterNode {
    RegisterNode {
        node_type: Some(NodeType::Generic),
        node_name: name.to_owned(),
        address: format!("{name}.example"),
        ..RegisterNode::default()
    }
}

/// An inventory service of `service_type` reachable at `address:port` (or nothing, for
/// haproxy and external).
pub fn service(service_type: ServiceType, name: &str, node_id: &NodeId) -> AddService {
    let db = service_type.has_connection();
    AddService {
        service_type: Some(service_type),
        service_name: name.to_owned(),
        node_id: node_id.clone(),
        address: db.then(|| "10.0.0.1".to_owned()),
        port: db.then_some(5432),
        ..AddService::default()
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> pmmcp::domain::Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
