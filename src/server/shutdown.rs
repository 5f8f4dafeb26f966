//! A graceful shutdown: no new connections or requests, what was accepted is
//! finished within `KLAV_SHUTDOWN_TIMEOUT`, every connection gets a close, and a
//! cluster node says goodbye so that its users go offline for the others at once.

use super::event_loop::Server;
use crate::close::CloseReason;
use crate::conn::ConnId;
use crate::hub::Hub;
use crate::services::Services;

impl Server {
    pub(super) fn begin_shutdown(&mut self) {
        crate::log!(
            Info,
            "shutting down: no new connections; finishing queued work"
        );
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        if let Some(mut l) = self.metrics_listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        // Stop taking requests; what was accepted is finished below.
        self.draining = true;
        for conn in self.hub.conns.iter_mut() {
            conn.life.pause();
        }
    }

    /// One step of a graceful shutdown; true when it is complete.
    pub(super) fn shutdown_step(&mut self, deadline_passed: bool) -> bool {
        if self.hub.svc.outstanding > 0 && !deadline_passed {
            return false;
        }
        let open: Vec<ConnId> = self
            .hub
            .conns
            .iter()
            .filter(|c| !c.life.is_lingering())
            .map(|c| c.id)
            .collect();
        for id in open {
            self.close_conn(id, CloseReason::Shutdown);
        }
        self.flush_dirty();
        self.hub.conns.is_empty() || deadline_passed
    }

    /// The loop has stopped: the workers finish what is queued (the writer
    /// commits it) and stop; in a cluster, the node leaves it.
    pub(super) fn stopped(self) {
        let Server {
            hub,
            bus,
            sealer,
            database_url,
            webhooks,
            ..
        } = self;
        let Hub { svc, cluster, .. } = hub;
        let Services { db, hasher, .. } = svc;
        if let Some(w) = webhooks {
            w.stop();
        }
        db.shutdown();
        hasher.shutdown();
        if let (Some(bus), Some(sealer)) = (bus, sealer) {
            // Leave the cluster: this node's users go offline for the others
            // now, not after the node timeout.
            let name = crate::db::application_name(&cluster.node, "leave");
            match crate::db::pg_config(&database_url, &name)
                .and_then(|pg| pg.connect(postgres::NoTls).map_err(Into::into))
                .and_then(|mut c| crate::db::nodes::unregister(&mut c, &*sealer))
            {
                Ok(()) => crate::log!(Info, "left the cluster"),
                Err(e) => crate::log!(Warn, "could not leave the cluster cleanly: {e}"),
            }
            let _ = bus.join();
        }
    }
}
