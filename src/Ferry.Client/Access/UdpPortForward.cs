using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Ferry.Core.Flows;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Ferry.Client.Access;

/// <summary>
/// A UDP port on 127.0.0.1 whose datagrams all go to one destination as UDP flows: one flow per application source address, closed
/// after the idle timeout; replies come back to that source from the forward's port. A refused flow drops the datagrams and logs why.
/// </summary>
public sealed class UdpPortForward : ILoopbackListener
{
    private static readonly IPEndPoint AnySource = new(IPAddress.Any, 0);
    private readonly ConcurrentDictionary<IPEndPoint, UdpFlowSession> _sessions = new();
    private readonly CancellationTokenSource _stopping = new();
    private readonly ClientRoutes _routes;
    private readonly IFlowOpener _opener;
    private readonly LoopbackProxyOptions _options;
    private readonly ILogger _logger;
    private Socket? _socket;
    private Task? _receiving;
    private int _stopped;
    private int _limitLogged;

    public UdpPortForward(string host, int port, ClientRoutes routes, IFlowOpener opener, LoopbackProxyOptions? options = null, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(routes);
        ArgumentNullException.ThrowIfNull(opener);
        if (!FlowHeader.TryValidate(FlowProtocol.Udp, host, port, out var error))
        {
            throw new ArgumentException($"cannot forward UDP to {FlowHeader.FormatHostPort(host, port)}: {error}", nameof(host));
        }
        Host = host;
        Port = port;
        _routes = routes;
        _opener = opener;
        _options = options ?? new LoopbackProxyOptions();
        _logger = logger ?? NullLogger.Instance;
        Kind = $"forward {FlowHeader.FormatHostPort(host, port)}/udp";
    }

    /// <summary>The destination every datagram goes to.</summary>
    public string Host { get; }

    public int Port { get; }

    public string Kind { get; }

    public IPEndPoint LocalEndPoint => (IPEndPoint?)_socket?.LocalEndPoint ?? throw new InvalidOperationException($"the {Kind} listener has not started");

    /// <summary>Flows open now, one per application source address.</summary>
    public int ActiveFlows => _sessions.Count;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _stopped) != 0, this);
        if (_socket is not null)
        {
            throw new InvalidOperationException($"the {Kind} listener is already started");
        }
        var socket = LoopbackSocket.Bind(SocketType.Dgram, _options.Port);
        _socket = socket;
        LoopbackProxy.Log.Listening(_logger, Kind, LocalEndPoint);
        _receiving = Task.Run(() => ReceiveAsync(socket, _stopping.Token), CancellationToken.None);
        return Task.CompletedTask;
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0)
        {
            return;
        }
        await _stopping.CancelAsync();
        _socket?.Dispose();
        if (_receiving is not null)
        {
            await _receiving.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
        await Task.WhenAll(_sessions.Values.Select(s => s.DisposeAsync().AsTask())).WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        LoopbackProxy.Log.Stopped(_logger, Kind);
    }

    private async Task ReceiveAsync(Socket socket, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(UdpFlowFraming.MaxPayloadLength + 1);
        try
        {
            while (!cancellationToken.IsCancellationRequested)
            {
                SocketReceiveFromResult received;
                try
                {
                    received = await socket.ReceiveFromAsync(buffer.AsMemory(0, UdpFlowFraming.MaxPayloadLength), SocketFlags.None, AnySource, cancellationToken);
                }
                catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionRefused or SocketError.MessageSize)
                {
                    // An ICMP error about an earlier reply to an application that has gone, or an oversized datagram: carry on.
                    continue;
                }
                catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
                {
                    return;
                }
                Dispatch(socket, (IPEndPoint)received.RemoteEndPoint, buffer.AsSpan(0, received.ReceivedBytes), cancellationToken);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    // Only the receive loop creates sessions, so a source never gets two at once.
    private void Dispatch(Socket socket, IPEndPoint source, ReadOnlySpan<byte> payload, CancellationToken cancellationToken)
    {
        for (var attempt = 0; attempt < 2; attempt++)
        {
            if (!_sessions.TryGetValue(source, out var session))
            {
                if (_sessions.Count >= _options.MaxConnections)
                {
                    if (Interlocked.Exchange(ref _limitLogged, 1) == 0)
                    {
                        UdpLog.Dropped(_logger, Kind, $"{_options.MaxConnections} application addresses already have flows, the limit");
                    }
                    return;
                }
                var destination = FlowHeader.FormatHostPort(Host, Port);
                session = new UdpFlowSession(Kind, $"{destination} from {source}",
                    ct => UdpFlowRouter.OpenAsync(_routes, _opener, _options, Kind, Host, Port, _logger, ct),
                    async (reply, ct) => await socket.SendToAsync(reply, SocketFlags.None, source, ct),
                    _options.UdpIdleTimeout, _logger, cancellationToken);
                _sessions[source] = session;
                _ = ForgetWhenDoneAsync(source, session);
            }
            if (session.Post(payload))
            {
                return;
            }
            // That flow has just ended: the next one carries this datagram.
            _sessions.TryRemove(new KeyValuePair<IPEndPoint, UdpFlowSession>(source, session));
        }
    }

    private async Task ForgetWhenDoneAsync(IPEndPoint source, UdpFlowSession session)
    {
        await session.Completion.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        _sessions.TryRemove(new KeyValuePair<IPEndPoint, UdpFlowSession>(source, session));
        await session.DisposeAsync();
    }
}
