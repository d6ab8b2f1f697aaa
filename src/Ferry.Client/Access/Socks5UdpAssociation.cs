using System.Buffers;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Ferry.Core.Flows;
using Microsoft.Extensions.Logging;

namespace Ferry.Client.Access;

/// <summary>
/// One SOCKS5 UDP ASSOCIATE (RFC 1928 section 7): a loopback UDP relay socket that takes datagrams from the associating client
/// only (its IP; the first datagram fixes its port), gives each destination its own UDP flow, and wraps replies in the header
/// naming the destination they came from. Lives until its TCP control connection closes.
/// </summary>
internal sealed class Socks5UdpAssociation : IAsyncDisposable
{
    private static readonly IPEndPoint AnySource = new(IPAddress.Any, 0);
    private readonly ConcurrentDictionary<(string Host, int Port), UdpFlowSession> _sessions = new();
    private readonly ConcurrentDictionary<string, byte> _loggedDrops = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stop;
    private readonly Socket _relay;
    private readonly IPAddress _client;
    private readonly ClientRoutes _routes;
    private readonly IFlowOpener _opener;
    private readonly LoopbackProxyOptions _options;
    private readonly string _kind;
    private readonly ILogger _logger;
    private readonly Task _receiving;
    private IPEndPoint? _clientEndPoint;
    private long _flows;
    private long _dropped;

    public Socks5UdpAssociation(IPAddress client, ClientRoutes routes, IFlowOpener opener, LoopbackProxyOptions options, string kind, ILogger logger, CancellationToken cancellationToken)
    {
        _client = client.IsIPv4MappedToIPv6 ? client.MapToIPv4() : client;
        _routes = routes;
        _opener = opener;
        _options = options;
        _kind = kind;
        _logger = logger;
        _relay = new Socket(_client.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        try
        {
            // The associating client reaches the proxy on loopback, so the relay socket needs no wider address.
            _relay.Bind(new IPEndPoint(_client.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Loopback : IPAddress.Loopback, 0));
        }
        catch
        {
            _relay.Dispose();
            throw;
        }
        RelayEndPoint = (IPEndPoint)_relay.LocalEndPoint!;
        _stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        _receiving = Task.Run(() => ReceiveAsync(_stop.Token), CancellationToken.None);
    }

    /// <summary>Where the application sends its datagrams: the BND.ADDR and BND.PORT of the reply.</summary>
    public IPEndPoint RelayEndPoint { get; }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        _relay.Dispose();
        await _receiving.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        await Task.WhenAll(_sessions.Values.Select(s => s.DisposeAsync().AsTask())).WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        UdpLog.AssociationEnded(_logger, _kind, RelayEndPoint.ToString(), Interlocked.Read(ref _flows), Interlocked.Read(ref _dropped));
        _stop.Dispose();
    }

    private async Task ReceiveAsync(CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(Socks5UdpHeader.MaxLength + UdpFlowFraming.MaxPayloadLength);
        var any = _client.AddressFamily == AddressFamily.InterNetworkV6 ? new IPEndPoint(IPAddress.IPv6Any, 0) : AnySource;
        try
        {
            while (!cancellationToken.IsCancellationRequested)
            {
                SocketReceiveFromResult received;
                try
                {
                    received = await _relay.ReceiveFromAsync(buffer, SocketFlags.None, any, cancellationToken);
                }
                catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionRefused or SocketError.MessageSize)
                {
                    continue;
                }
                catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
                {
                    return;
                }
                Dispatch((IPEndPoint)received.RemoteEndPoint, buffer.AsSpan(0, received.ReceivedBytes), cancellationToken);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private void Dispatch(IPEndPoint source, ReadOnlySpan<byte> datagram, CancellationToken cancellationToken)
    {
        var address = source.Address.IsIPv4MappedToIPv6 ? source.Address.MapToIPv4() : source.Address;
        if (!address.Equals(_client))
        {
            Drop("from-elsewhere", $"it came from {source}, not from the associating client {_client}");
            return;
        }
        _clientEndPoint ??= source;
        if (source.Port != _clientEndPoint.Port)
        {
            Drop("other-port", $"it came from {source}, but this association's first datagram fixed the client's port at {_clientEndPoint.Port}");
            return;
        }
        if (!Socks5UdpHeader.TryParse(datagram, out var host, out var port, out var headerLength, out var error))
        {
            Drop(datagram.Length > 2 && datagram[2] != 0 ? "fragment" : "header", error);
            return;
        }
        var payload = datagram[headerLength..];
        if (payload.Length > UdpFlowFraming.MaxPayloadLength)
        {
            Drop("size", $"its payload is {payload.Length} bytes; a flow carries at most {UdpFlowFraming.MaxPayloadLength}");
            return;
        }
        var key = (host.ToLowerInvariant(), port);
        for (var attempt = 0; attempt < 2; attempt++)
        {
            if (!_sessions.TryGetValue(key, out var session))
            {
                if (_sessions.Count >= _options.MaxConnections)
                {
                    Drop("limit", $"this association already has flows to {_options.MaxConnections} destinations, the limit");
                    return;
                }
                var client = _clientEndPoint;
                var named = host;
                session = new UdpFlowSession(_kind, FlowHeader.FormatHostPort(host, port),
                    ct => UdpFlowRouter.OpenAsync(_routes, _opener, _options, _kind, named, port, _logger, ct),
                    (reply, ct) => ToClientAsync(client, named, port, reply, ct),
                    _options.UdpIdleTimeout, _logger, cancellationToken);
                _sessions[key] = session;
                Interlocked.Increment(ref _flows);
                _ = ForgetWhenDoneAsync(key, session);
            }
            if (session.Post(payload))
            {
                return;
            }
            _sessions.TryRemove(new KeyValuePair<(string, int), UdpFlowSession>(key, session));
        }
    }

    // Replies name the destination the way the application did, so it can match them to what it sent.
    private async ValueTask ToClientAsync(IPEndPoint client, string host, int port, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(Socks5UdpHeader.MaxLength + payload.Length);
        try
        {
            var header = Socks5UdpHeader.Write(buffer, host, port);
            payload.Span.CopyTo(buffer.AsSpan(header));
            await _relay.SendToAsync(buffer.AsMemory(0, header + payload.Length), SocketFlags.None, client, cancellationToken);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private void Drop(string kind, string reason)
    {
        Interlocked.Increment(ref _dropped);
        if (_loggedDrops.TryAdd(kind, 0))
        {
            UdpLog.Dropped(_logger, _kind, reason);
        }
    }

    private async Task ForgetWhenDoneAsync((string, int) key, UdpFlowSession session)
    {
        await session.Completion.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        _sessions.TryRemove(new KeyValuePair<(string, int), UdpFlowSession>(key, session));
        await session.DisposeAsync();
    }
}
