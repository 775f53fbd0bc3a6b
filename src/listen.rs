//! The sockets clients connect to: the TCP listener (`listen_addr`) and,
//! if `unix_socket_dir` is set, a Unix-domain socket beside it.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

use crate::net::{Keepalive, Peer, Stream};

/// Pending connections a listening socket queues.
const LISTEN_BACKLOG: i32 = 1024;

/// The client listeners.
#[derive(Debug)]
pub struct Listeners {
    tcp: TcpListener,
    unix: Option<UnixSocket>,
}

impl Listeners {
    /// Binds `addr` (port 0 picks a free port), with `SO_REUSEPORT` if
    /// `reuse_port`, and the Unix-domain socket in `unix_dir` named after
    /// the port that was bound. TCP clients get `TCP_NODELAY` and
    /// `keepalive`.
    pub fn bind(
        addr: SocketAddr,
        reuse_port: bool,
        unix_dir: Option<&Path>,
        keepalive: Keepalive,
    ) -> io::Result<Self> {
        let tcp = tcp(addr, reuse_port, keepalive)?;
        let unix = match unix_dir {
            Some(dir) => Some(UnixSocket::bind(dir, tcp.local_addr()?.port(), reuse_port)?),
            None => None,
        };
        Ok(Listeners { tcp, unix })
    }

    /// The TCP address clients connect to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The Unix-domain socket's path, if there is one.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|u| u.path.as_path())
    }

    /// The next client, on either socket. Cancel safe.
    pub async fn accept(&self) -> io::Result<(Stream, Peer)> {
        let Some(unix) = &self.unix else {
            return self.accept_tcp().await;
        };
        tokio::select! {
            accepted = self.accept_tcp() => accepted,
            accepted = unix.listener.accept() => {
                let (stream, _) = accepted?;
                Ok((Stream::Unix(stream), Peer::Unix))
            }
        }
    }

    /// Closes the TCP socket and keeps the Unix-domain one, if any (for
    /// the console during `SHUTDOWN WAIT_FOR_CLIENTS`, as in PgBouncer).
    pub fn into_unix(self) -> Option<UnixOnly> {
        self.unix.map(UnixOnly)
    }

    async fn accept_tcp(&self) -> io::Result<(Stream, Peer)> {
        // TCP_NODELAY and keepalive come from the listening socket.
        let (tcp, peer) = self.tcp.accept().await?;
        Ok((Stream::Plain(tcp), Peer::Tcp(peer)))
    }
}

/// Binds the TCP listener, with `SO_REUSEPORT` if asked. The options
/// set here pass on to every accepted connection (Linux copies them), which
/// saves a system call per client.
fn tcp(addr: SocketAddr, reuse_port: bool, keepalive: Keepalive) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    keepalive.apply(&socket)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// The Unix-domain socket alone, once TCP is closed.
#[derive(Debug)]
pub struct UnixOnly(UnixSocket);

impl UnixOnly {
    /// The next client on the socket. Cancel safe.
    pub async fn accept(&self) -> io::Result<(Stream, Peer)> {
        let (stream, _) = self.0.listener.accept().await?;
        Ok((Stream::Unix(stream), Peer::Unix))
    }
}

/// A listening Unix-domain socket; its file is removed on drop unless
/// another process has replaced it since.
#[derive(Debug)]
struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
    inode: u64,
}

impl UnixSocket {
    /// Binds `dir/.s.PGSQL.port`. A file left there by a process that is
    /// gone is replaced. One that a live process listens on is an error,
    /// unless `take_over` (`so_reuseport`, a rolling restart): new clients
    /// then come to this process, the old one keeps its own.
    fn bind(dir: &Path, port: u16, take_over: bool) -> io::Result<Self> {
        let path = dir.join(format!(".s.PGSQL.{port}"));
        if path.exists() {
            let live = std::os::unix::net::UnixStream::connect(&path).is_ok();
            if live && !take_over {
                let msg = format!("{} is in use by another process", path.display());
                return Err(io::Error::new(io::ErrorKind::AddrInUse, msg));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        // Like Postgres' and PgBouncer's default: any local user may
        // connect (and must then log in).
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
        let inode = std::fs::metadata(&path)?.ino();
        Ok(UnixSocket {
            listener,
            path,
            inode,
        })
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let ours = std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(dir: &Path, take_over: bool) -> io::Result<Listeners> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let l = Listeners::bind(addr, take_over, Some(dir), Keepalive::default())?;
        Ok(l)
    }

    #[tokio::test]
    async fn a_live_socket_is_refused_unless_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let first = bind(dir.path(), false).unwrap();
        let port = first.local_addr().unwrap().port();
        let path = dir.path().join(format!(".s.PGSQL.{port}"));
        assert_eq!(first.unix_path(), Some(path.as_path()));
        // Another process on the same port (SO_REUSEPORT) finds the socket.
        let unix = UnixSocket::bind(dir.path(), port, false).unwrap_err();
        assert_eq!(unix.kind(), io::ErrorKind::AddrInUse);
        assert!(unix.to_string().contains(".s.PGSQL."), "{unix}");
        let second = UnixSocket::bind(dir.path(), port, true).unwrap();
        // The old one leaves; the new one's file stays.
        drop(first);
        assert!(path.exists());
        drop(second);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn clients_on_the_socket_are_accepted_as_unix_peers() {
        let dir = tempfile::tempdir().unwrap();
        let l = bind(dir.path(), false).unwrap();
        let path = l.unix_path().unwrap().to_owned();
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (stream, peer) = l.accept().await.unwrap();
        assert_eq!(peer, Peer::Unix);
        assert!(matches!(stream, Stream::Unix(_)) && !stream.is_tls());
        let _tcp = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await;
        let (_, peer) = l.accept().await.unwrap();
        assert!(matches!(peer, Peer::Tcp(_)));
    }

    #[tokio::test]
    async fn accepted_clients_inherit_nodelay_and_keepalive() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let keepalive = Keepalive {
            enabled: true,
            idle: std::time::Duration::from_secs(77),
            interval: std::time::Duration::from_secs(5),
            count: 4,
        };
        let l = Listeners::bind(addr, false, None, keepalive).unwrap();
        let _client = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await;
        let (Stream::Plain(tcp), _) = l.accept().await.unwrap() else {
            panic!("a TCP client");
        };
        let s = socket2::SockRef::from(&tcp);
        assert!(s.tcp_nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap().as_secs(), 77);
        assert_eq!(s.tcp_keepalive_interval().unwrap().as_secs(), 5);
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        let off = Keepalive::default();
        let l = Listeners::bind(addr, false, None, off).unwrap();
        let _client = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await;
        let (Stream::Plain(tcp), _) = l.accept().await.unwrap() else {
            panic!("a TCP client");
        };
        let s = socket2::SockRef::from(&tcp);
        assert!(s.tcp_nodelay().unwrap() && !s.keepalive().unwrap());
    }
}
