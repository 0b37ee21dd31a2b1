//! A network (L4) filter written as Envoy's TCP filters are (a root context of type
//! `StreamContext` counting downstream bytes). Sluice filters HTTP backend calls only:
//! `sluice check` refuses it with the reason, instead of every call failing.

use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Counter(0)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

struct Counter(usize);

impl Context for Counter {}

impl StreamContext for Counter {
    fn on_downstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        self.0 += data_size;
        Action::Continue
    }
}
