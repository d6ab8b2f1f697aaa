using System.Net;
using System.Runtime.InteropServices;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Threading.Channels;
using Ferry.Quic.Interop;
using Ferry.Quic.Internal;
using static Ferry.Quic.Interop.Ngtcp2Const;

namespace Ferry.Quic;

public sealed partial class QuicConnection
{
    /// <summary>
    /// Moves this connection to another path (another endpoint's socket, or a relay path) without losing stream
    /// data. By default the new path is validated first (PATH_CHALLENGE/RESPONSE) and the connection switches on
    /// success; with <paramref name="immediate"/> it switches at once and validates afterwards, for when the
    /// old path is already dead. Only the client may migrate (RFC 9000 §9).
    /// </summary>
    public async Task MigrateAsync(IQuicPath path, bool immediate = false, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (path is not IQuicPathInternal p)
        {
            throw new ArgumentException("The path must come from QuicEndpoint.CreatePath or CreateRelayPath.", nameof(path));
        }

        if (IsServer)
        {
            throw new InvalidOperationException("Only the client side of a connection can initiate migration.");
        }

        Task<bool> validated;
        lock (_lock)
        {
            ThrowIfTerminalLocked();
            if (!_endpoints.Contains(p.Endpoint))
            {
                // Packets on the new path arrive through that endpoint's socket, so it must route our CIDs too.
                _endpoints.Add(p.Endpoint);
                foreach (var key in _cids)
                {
                    p.Endpoint.Register(key, this);
                }
            }

            if (!_locals.Contains(p.Local))
            {
                _locals.Add(p.Local);
            }

            _migration?.TrySetResult(false);
            _migration = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
            _migrationRemote = p.Remote;
            validated = _migration.Task;
            int rv = InitiateMigrationLocked(p.Local, p.Remote, immediate);
            if (rv != 0)
            {
                _migration = null;
                throw new QuicException(QuicError.InternalError, "Migration could not start: " + Ngtcp2.StrError(rv) +
                    (rv == -237 ? " (no spare connection ID from the peer yet)" : ""));
            }

            FlushLocked();
            ArmTimerLocked();
        }

        if (!await validated.WaitAsync(cancellationToken).ConfigureAwait(false))
        {
            lock (_lock)
            {
                ThrowIfTerminalLocked();
            }

            throw new QuicException(QuicError.ConnectionTimeout, $"Path validation to {p.RemoteEndPoint} failed; the connection stays on {RemoteEndPoint}.");
        }
    }

    private unsafe int InitiateMigrationLocked(NativeAddress local, NativeAddress remote, bool immediate)
    {
        var path = new ngtcp2_path { local = local.ToAddr(), remote = remote.ToAddr() };
        ulong now = Clock.NowNs();
        return immediate
            ? Ngtcp2.ngtcp2_conn_initiate_immediate_migration(_c, &path, now)
            : Ngtcp2.ngtcp2_conn_initiate_migration(_c, &path, now);
    }

    /// <summary>Called from the path_validation callback.</summary>
    private unsafe void OnPathValidatedLocked(ngtcp2_path* path, bool success)
    {
        if (_migration is { } waiter && _migrationRemote is { } target && target.Matches(path->remote))
        {
            _migration = null;
            waiter.TrySetResult(success);
        }
    }

    /// <summary>
    /// An endpoint is going away: if this connection has moved to a path on another endpoint, just forget the
    /// old one; otherwise close.
    /// </summary>
    internal async ValueTask DetachOrCloseAsync(QuicEndpoint endpoint)
    {
        lock (_lock)
        {
            if (_terminal is not null)
            {
                return;
            }

            if (_endpoints.Count > 1 && !ReferenceEquals(_local.Sink, endpoint))
            {
                _endpoints.Remove(endpoint);
                _locals.RemoveAll(l => ReferenceEquals(l.Sink, endpoint));
                foreach (var key in _cids)
                {
                    endpoint.Unregister(key, this);
                }

                if (ReferenceEquals(_endpoint, endpoint))
                {
                    _endpoint = _endpoints[0];
                }

                return;
            }
        }

        await DisposeAsync().ConfigureAwait(false);
    }

    private void SendLocked(byte[] buffer, int length, in ngtcp2_path path, TaskCompletionSource? sent)
    {
        var local = ResolveLocal(path.local);
        _bytesSent += length;
        (local.Sink ?? _endpoint).EnqueueSend(buffer, length, ResolveRemote(path.remote), sent);
    }

    private void AddLocked(PacketBatch batch, int length, in ngtcp2_path path)
    {
        _bytesSent += length;
        batch.Add(length, ResolveLocal(path.local), ResolveRemote(path.remote));
    }

    /// <summary>Hands a flush's packets to their sinks, each run of packets for one sink in one call.</summary>
    private void SubmitLocked(PacketBatch batch)
    {
        for (int i = 0; i < batch.Count;)
        {
            var sink = batch.Local(i).Sink ?? _endpoint;
            int j = i + 1;
            while (j < batch.Count && ReferenceEquals(batch.Local(j).Sink ?? _endpoint, sink))
            {
                j++;
            }

            sink.SendBatch(batch.Packets(i, j - i));
            i = j;
        }
    }

    /// <summary>Follows ngtcp2's current path after migration (ours or the peer's).</summary>
    private unsafe void TrackCurrentPathLocked()
    {
        var path = Ngtcp2.ngtcp2_conn_get_path(_c);
        if (path is null)
        {
            return;
        }

        if (!_local.Matches(path->local))
        {
            _local = ResolveLocal(path->local);
        }

        if (!_remote.Matches(path->remote))
        {
            var old = _remote;
            _remote = ResolveRemote(path->remote);
            QuicLog.PathChanged(_endpoint.Logger, RemoteIdentity, old.EndPoint, _remote.EndPoint);
        }
    }

    private NativeAddress ResolveLocal(ngtcp2_addr addr)
    {
        foreach (var local in _locals)
        {
            if (local.Matches(addr))
            {
                return local;
            }
        }

        return _local;
    }

    private unsafe NativeAddress ResolveRemote(ngtcp2_addr addr)
    {
        if (_remote.Matches(addr))
        {
            return _remote;
        }

        if (_migration is not null && _migrationRemote?.Matches(addr) == true)
        {
            return _migrationRemote;
        }

        // ngtcp2 is probing or has migrated to another path.
        var ep = NativeAddress.FromNative(addr);
        return ep is null ? _remote : _endpoint.GetAddress(ep);
    }
}
