//! [`State`]: the whole inventory and settings at one revision, folded from events by
//! [`State::evolve`], which is total (never fails, never panics) and exhaustive.
//!
//! Maps are persistent (`imbl`), so cloning a state is O(1): the dispatcher decides a batch on
//! a clone and readers keep a snapshot without blocking writers. Secondary indexes (names,
//! addresses, children) keep every uniqueness check and cascade lookup at O(log n).

use super::{
    Agent, AgentId, AlertRule, AlertTemplate, ApiToken, Node, NodeId, RuleId, Service, ServiceId,
    Settings, TokenId,
};
use crate::events::Event;
use imbl::{OrdMap, OrdSet};
use std::sync::Arc;

/// The inventory and settings, plus the revision (last applied position) they reflect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Position of the last event folded in; 0 for the empty log.
    pub revision: i64,
    pub nodes: OrdMap<NodeId, Arc<Node>>,
    pub services: OrdMap<ServiceId, Arc<Service>>,
    pub agents: OrdMap<AgentId, Arc<Agent>>,
    pub settings: Arc<Settings>,
    /// API tokens (their hashes, never their secrets).
    pub tokens: OrdMap<TokenId, Arc<ApiToken>>,
    /// User alert rule templates by name (built-ins are not state: they ship with the binary).
    pub alert_templates: OrdMap<String, Arc<AlertTemplate>>,
    pub alert_rules: OrdMap<RuleId, Arc<AlertRule>>,
    index: Index,
}

/// Lookups derived from the entities; rebuilt by evolve, never stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Index {
    // Keys are shared strings: copy-on-write clones them along every changed path.
    node_by_name: OrdMap<Arc<str>, NodeId>,
    node_by_address_region: OrdMap<(Arc<str>, Arc<str>), NodeId>,
    node_by_container_id: OrdMap<Arc<str>, NodeId>,
    service_by_name: OrdMap<Arc<str>, ServiceId>,
    services_by_node: OrdMap<NodeId, OrdSet<ServiceId>>,
    agents_by_node: OrdMap<NodeId, OrdSet<AgentId>>,
    agents_by_runs_on_node: OrdMap<NodeId, OrdSet<AgentId>>,
    agents_by_service: OrdMap<ServiceId, OrdSet<AgentId>>,
    agents_by_pmm_agent: OrdMap<AgentId, OrdSet<AgentId>>,
    token_by_hash: OrdMap<Arc<str>, TokenId>,
    token_by_name: OrdMap<Arc<str>, TokenId>,
    /// Hashes of revoked tokens: never accepted again.
    retired_token_hashes: OrdSet<Arc<str>>,
}

fn pair(a: &str, b: &str) -> (Arc<str>, Arc<str>) {
    (Arc::from(a), Arc::from(b))
}

fn link<K: Ord + Clone, V: Ord + Clone>(m: &mut OrdMap<K, OrdSet<V>>, k: &K, v: &V) {
    m.entry(k.clone()).or_default().insert(v.clone());
}

fn unlink<K: Ord + Clone, V: Ord + Clone>(m: &mut OrdMap<K, OrdSet<V>>, k: &K, v: &V) {
    if let Some(set) = m.get_mut(k) {
        set.remove(v);
        if set.is_empty() {
            m.remove(k);
        }
    }
}

fn members<K: Ord, V: Ord + Clone>(m: &OrdMap<K, OrdSet<V>>, k: &K) -> Vec<V> {
    m.get(k)
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default()
}

impl State {
    /// Folds one event in. Total: an event that does not fit (unknown id, duplicate) still
    /// leaves a consistent state, because the log is the truth and replay must never stop.
    pub fn evolve(&mut self, event: &Event) {
        match event {
            Event::NodeAdded { node } => self.put_node(node.clone()),
            Event::NodeRemoved { node_id } => self.drop_node(node_id),
            Event::ServiceAdded { service } | Event::ServiceChanged { service } => {
                self.put_service(service.clone())
            }
            Event::ServiceRemoved { service_id } => self.drop_service(service_id),
            Event::AgentAdded { agent } | Event::AgentChanged { agent } => {
                self.put_agent(agent.clone())
            }
            Event::AgentRemoved { agent_id } => self.drop_agent(agent_id),
            Event::SettingsChanged { settings } => self.settings = Arc::new(settings.clone()),
            Event::TokenCreated { token } => self.put_token(token.clone()),
            Event::TokenRevoked { token_id } => {
                if let Some(t) = self.tokens.get(token_id) {
                    let hash = Arc::from(t.hash.as_str());
                    self.index.retired_token_hashes.insert(hash);
                }
                self.drop_token(token_id)
            }
            Event::AlertTemplateCreated { template } | Event::AlertTemplateUpdated { template } => {
                self.alert_templates
                    .insert(template.name.clone(), Arc::new(template.clone()));
            }
            Event::AlertTemplateDeleted { name } => {
                self.alert_templates.remove(name);
            }
            Event::AlertRuleCreated { rule } | Event::AlertRuleChanged { rule } => {
                self.alert_rules
                    .insert(rule.rule_id.clone(), Arc::new(rule.clone()));
            }
            Event::AlertRuleDeleted { rule_id } => {
                self.alert_rules.remove(rule_id);
            }
        }
    }

    fn put_token(&mut self, token: ApiToken) {
        self.drop_token(&token.token_id);
        let ix = &mut self.index;
        ix.token_by_hash
            .insert(Arc::from(token.hash.as_str()), token.token_id.clone());
        ix.token_by_name
            .insert(Arc::from(token.name.as_str()), token.token_id.clone());
        self.tokens.insert(token.token_id.clone(), Arc::new(token));
    }

    fn drop_token(&mut self, id: &TokenId) {
        let Some(token) = self.tokens.remove(id) else {
            return;
        };
        let ix = &mut self.index;
        if ix.token_by_hash.get(token.hash.as_str()) == Some(id) {
            ix.token_by_hash.remove(token.hash.as_str());
        }
        if ix.token_by_name.get(token.name.as_str()) == Some(id) {
            ix.token_by_name.remove(token.name.as_str());
        }
    }

    /// A template by name: a user template, else a built-in one.
    pub fn alert_template(&self, name: &str) -> Option<Arc<AlertTemplate>> {
        self.alert_templates
            .get(name)
            .cloned()
            .or_else(|| super::alerting::builtin_templates().get(name).cloned())
    }

    /// The token whose secret hashes to `hash`.
    pub fn token_by_hash(&self, hash: &str) -> Option<&Arc<ApiToken>> {
        self.index
            .token_by_hash
            .get(hash)
            .and_then(|id| self.tokens.get(id))
    }

    /// True when a token with this hash is live or was revoked: a hash is used once.
    pub fn token_hash_known(&self, hash: &str) -> bool {
        self.index.token_by_hash.contains_key(hash)
            || self.index.retired_token_hashes.contains(hash)
    }

    /// The token named `name`.
    pub fn token_by_name(&self, name: &str) -> Option<&Arc<ApiToken>> {
        self.index
            .token_by_name
            .get(name)
            .and_then(|id| self.tokens.get(id))
    }

    /// Folds an event stored at `position`.
    pub fn apply_at(&mut self, position: i64, event: &Event) {
        self.evolve(event);
        self.revision = position;
    }

    fn put_node(&mut self, node: Node) {
        self.drop_node(&node.node_id);
        let ix = &mut self.index;
        let id = node.node_id.clone();
        ix.node_by_name
            .insert(Arc::from(node.node_name.as_str()), id.clone());
        if let Some(region) = node.region.as_ref().filter(|r| !r.is_empty()) {
            ix.node_by_address_region
                .insert(pair(&node.address, region), id.clone());
        }
        if let Some(c) = &node.container_id {
            ix.node_by_container_id
                .insert(Arc::from(c.as_str()), id.clone());
        }
        self.nodes.insert(id, Arc::new(node));
    }

    fn drop_node(&mut self, id: &NodeId) {
        let Some(node) = self.nodes.remove(id) else {
            return;
        };
        let ix = &mut self.index;
        if ix.node_by_name.get(node.node_name.as_str()) == Some(id) {
            ix.node_by_name.remove(node.node_name.as_str());
        }
        if let Some(region) = &node.region {
            let key = pair(&node.address, region);
            if ix.node_by_address_region.get(&key) == Some(id) {
                ix.node_by_address_region.remove(&key);
            }
        }
        if let Some(c) = &node.container_id
            && ix.node_by_container_id.get(c.as_str()) == Some(id)
        {
            ix.node_by_container_id.remove(c.as_str());
        }
    }

    fn put_service(&mut self, service: Service) {
        self.drop_service(&service.service_id);
        let id = service.service_id.clone();
        self.index
            .service_by_name
            .insert(Arc::from(service.service_name.as_str()), id.clone());
        link(&mut self.index.services_by_node, &service.node_id, &id);
        self.services.insert(id, Arc::new(service));
    }

    fn drop_service(&mut self, id: &ServiceId) {
        let Some(s) = self.services.remove(id) else {
            return;
        };
        if self.index.service_by_name.get(s.service_name.as_str()) == Some(id) {
            self.index.service_by_name.remove(s.service_name.as_str());
        }
        unlink(&mut self.index.services_by_node, &s.node_id, id);
    }

    fn put_agent(&mut self, agent: Agent) {
        self.drop_agent(&agent.agent_id);
        let id = agent.agent_id.clone();
        let ix = &mut self.index;
        if let Some(n) = &agent.node_id {
            link(&mut ix.agents_by_node, n, &id);
        }
        if let Some(n) = &agent.runs_on_node_id {
            link(&mut ix.agents_by_runs_on_node, n, &id);
        }
        if let Some(s) = &agent.service_id {
            link(&mut ix.agents_by_service, s, &id);
        }
        if let Some(p) = &agent.pmm_agent_id {
            link(&mut ix.agents_by_pmm_agent, p, &id);
        }
        self.agents.insert(id, Arc::new(agent));
    }

    fn drop_agent(&mut self, id: &AgentId) {
        let Some(a) = self.agents.remove(id) else {
            return;
        };
        let ix = &mut self.index;
        if let Some(n) = &a.node_id {
            unlink(&mut ix.agents_by_node, n, id);
        }
        if let Some(n) = &a.runs_on_node_id {
            unlink(&mut ix.agents_by_runs_on_node, n, id);
        }
        if let Some(s) = &a.service_id {
            unlink(&mut ix.agents_by_service, s, id);
        }
        if let Some(p) = &a.pmm_agent_id {
            unlink(&mut ix.agents_by_pmm_agent, p, id);
        }
    }

    /// The node with this name, if any.
    pub fn node_by_name(&self, name: &str) -> Option<&Arc<Node>> {
        self.index
            .node_by_name
            .get(name)
            .and_then(|id| self.nodes.get(id))
    }

    /// The node with this (address, region), if any (regions are never empty here).
    pub fn node_by_address_region(&self, address: &str, region: &str) -> Option<&Arc<Node>> {
        let key = pair(address, region);
        self.index
            .node_by_address_region
            .get(&key)
            .and_then(|id| self.nodes.get(id))
    }

    /// The node with this container id, if any.
    pub fn node_by_container_id(&self, container_id: &str) -> Option<&Arc<Node>> {
        self.index
            .node_by_container_id
            .get(container_id)
            .and_then(|id| self.nodes.get(id))
    }

    /// The service with this name, if any.
    pub fn service_by_name(&self, name: &str) -> Option<&Arc<Service>> {
        self.index
            .service_by_name
            .get(name)
            .and_then(|id| self.services.get(id))
    }

    /// Services on a node, by id.
    pub fn services_on_node(&self, node: &NodeId) -> Vec<ServiceId> {
        members(&self.index.services_by_node, node)
    }

    /// Agents whose `node_id` is this node, by id.
    pub fn agents_with_node(&self, node: &NodeId) -> Vec<AgentId> {
        members(&self.index.agents_by_node, node)
    }

    /// Agents whose `runs_on_node_id` is this node (pmm-agents, pull external exporters).
    pub fn agents_running_on_node(&self, node: &NodeId) -> Vec<AgentId> {
        members(&self.index.agents_by_runs_on_node, node)
    }

    /// pmm-agents running on this node.
    pub fn pmm_agents_on_node(&self, node: &NodeId) -> Vec<AgentId> {
        self.agents_running_on_node(node)
            .into_iter()
            .filter(|id| {
                self.agents
                    .get(id)
                    .is_some_and(|a| a.agent_type == super::AgentType::PmmAgent)
            })
            .collect()
    }

    /// Agents of a service, by id.
    pub fn agents_of_service(&self, service: &ServiceId) -> Vec<AgentId> {
        members(&self.index.agents_by_service, service)
    }

    /// Agents run by a pmm-agent, by id.
    pub fn children_of(&self, pmm_agent: &AgentId) -> Vec<AgentId> {
        members(&self.index.agents_by_pmm_agent, pmm_agent)
    }

    /// True when nothing has been recorded yet.
    pub fn is_empty(&self) -> bool {
        self.revision == 0 && self.nodes.is_empty()
    }
}
