using System.Collections.Concurrent;

namespace Ferry.Controller.Sessions;

/// <summary>The sessions this replica holds, so a policy or relay change can be pushed to each without a restart.</summary>
public sealed class SessionRegistry
{
    private readonly ConcurrentDictionary<string, Func<Task>> _policyListeners = new();
    private readonly ConcurrentDictionary<string, Func<Task>> _relayListeners = new();
    private readonly ConcurrentDictionary<string, Func<Task>> _connectorListeners = new();
    // Load reports come from every connector every few seconds; clients hear of them at most this often.
    private static readonly TimeSpan ConnectorsCoalesce = TimeSpan.FromMilliseconds(250);
    private int _connectorsPending;

    private readonly ConcurrentDictionary<string, Func<Core.ControlPlane.SessionMessage, Task>> _byIdentity = new();
    private readonly ConcurrentDictionary<string, Func<string, Task>> _closers = new();

    private readonly ConcurrentDictionary<string, Core.ControlPlane.PathStatus[]> _paths = new();

    /// <summary>Keeps what a client last said about its paths (null forgets it, when its session ends).</summary>
    public void ReportPaths(string identity, Core.ControlPlane.PathStatus[]? paths)
    {
        if (paths is null)
        {
            _paths.TryRemove(identity, out _);
        }
        else
        {
            _paths[identity] = paths;
        }
    }

    /// <summary>The paths a device's client reported on its session with this replica; empty when it has none.</summary>
    public Core.ControlPlane.PathStatus[] PathsOf(string identity) => _paths.TryGetValue(identity, out var paths) ? paths : [];

    /// <summary>Lets other sessions send to this identity (a relay ticket for both ends of a pair).</summary>
    public void AddPeer(string identity, Func<Core.ControlPlane.SessionMessage, Task> send) => _byIdentity[identity] = send;

    public void RemovePeer(string identity, Func<Core.ControlPlane.SessionMessage, Task> send)
        => _byIdentity.TryRemove(new KeyValuePair<string, Func<Core.ControlPlane.SessionMessage, Task>>(identity, send));

    /// <summary>Lets an admin action end this identity's session (a removed device), with the reason the peer is told.</summary>
    public void AddCloser(string identity, Func<string, Task> close) => _closers[identity] = close;

    public void RemoveCloser(string identity, Func<string, Task> close)
        => _closers.TryRemove(new KeyValuePair<string, Func<string, Task>>(identity, close));

    /// <summary>Whether this replica holds a session for <paramref name="identity"/> now.</summary>
    public bool IsOnline(string identity) => _byIdentity.ContainsKey(identity);

    /// <summary>Ends the session of <paramref name="identity"/> if this replica holds it.</summary>
    public async Task DisconnectAsync(string identity, string reason)
    {
        if (_closers.TryGetValue(identity, out var close))
        {
            try
            {
                await close(reason);
            }
            catch (Exception e) when (e is System.Net.WebSockets.WebSocketException or IOException or OperationCanceledException or ObjectDisposedException)
            {
                // Already ending.
            }
        }
    }

    /// <summary>Sends to the session of <paramref name="identity"/> if this replica holds it; false otherwise.</summary>
    public async Task<bool> TrySendAsync(string identity, Core.ControlPlane.SessionMessage message)
    {
        if (!_byIdentity.TryGetValue(identity, out var send))
        {
            return false;
        }
        try
        {
            await send(message);
            return true;
        }
        catch (Exception e) when (e is System.Net.WebSockets.WebSocketException or IOException or OperationCanceledException or ObjectDisposedException)
        {
            return false;
        }
    }

    /// <summary>Registers a session that recomputes and pushes what it depends on (a client's grants, a connector's access table) on every policy change.</summary>
    public void AddPolicyListener(string sessionId, Func<Task> push) => _policyListeners[sessionId] = push;

    public void RemovePolicyListener(string sessionId) => _policyListeners.TryRemove(sessionId, out _);

    /// <summary>Registers a connector or client session that wants the relay list whenever it changes.</summary>
    public void AddRelayListener(string sessionId, Func<Task> pushRelays) => _relayListeners[sessionId] = pushRelays;

    public void RemoveRelayListener(string sessionId) => _relayListeners.TryRemove(sessionId, out _);

    /// <summary>Registers a client session that wants its networks' connector list (online, location, load) whenever it changes.</summary>
    public void AddConnectorListener(string sessionId, Func<Task> push) => _connectorListeners[sessionId] = push;

    public void RemoveConnectorListener(string sessionId) => _connectorListeners.TryRemove(sessionId, out _);

    /// <summary>Tells client sessions a connector's load changed; changes within a quarter second go out as one.</summary>
    public void NotifyConnectorsChanged()
    {
        if (Interlocked.Exchange(ref _connectorsPending, 1) == 1)
        {
            return;
        }
        _ = Task.Run(async () =>
        {
            await Task.Delay(ConnectorsCoalesce);
            Interlocked.Exchange(ref _connectorsPending, 0);
            Fan(_connectorListeners.Values);
        });
    }

    /// <summary>Tells every policy listener (clients' grants, connectors' access tables) to recompute; each sends only when its view changed.</summary>
    public void NotifyPolicyChanged() => Fan(_policyListeners.Values);

    /// <summary>Tells every connector and client the relay list changed (a relay came, went or moved).</summary>
    public void NotifyRelaysChanged() => Fan(_relayListeners.Values);

    private static void Fan(IEnumerable<Func<Task>> pushes)
    {
        foreach (var push in pushes)
        {
            _ = Task.Run(async () =>
            {
                try
                {
                    await push();
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    // A session that cannot be written to is ending; its own loop reports why.
                }
            });
        }
    }
}
