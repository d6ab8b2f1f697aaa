using System.Net;
using System.Net.Sockets;
using Ferry.Core.Flows;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Ferry.Connector.Flows;

/// <summary>The connector's end of one flow: reads the header, checks access, resolves and dials, answers, then copies bytes both ways.</summary>
public sealed partial class FlowHandler
{
    private readonly INameResolver _resolver;
    private readonly FlowHandlerOptions _options;
    private readonly ILogger _logger;

    public FlowHandler(INameResolver? resolver = null, FlowHandlerOptions? options = null, ILogger? logger = null)
    {
        _resolver = resolver ?? SystemNameResolver.Instance;
        _options = options ?? new FlowHandlerOptions();
        _logger = logger ?? NullLogger.Instance;
    }

    /// <summary>
    /// Serves one flow stream until both directions end, the flow fails, or <paramref name="cancellationToken"/> is cancelled — the
    /// caller cancels it to revoke a live flow, which closes both the stream and the connection to the destination. Owns and
    /// disposes <paramref name="stream"/>; network failures are logged, not thrown.
    /// </summary>
    /// <param name="stream">The flow stream from the client (a QUIC stream, or anything with the same half-close behaviour).</param>
    /// <param name="completeWrites">Ends the sending side of <paramref name="stream"/> (QUIC: CompleteWrites) while its receiving side goes on.</param>
    /// <param name="clientIdentity">The authenticated client identity, "device/dv_…".</param>
    /// <param name="access">The current access table of this connector's network.</param>
    /// <param name="admitted">Told the flow's header once policy let it through, so the caller can re-check it when policy changes.</param>
    /// <param name="datagrams">The UDP flows of the stream's connection; without it UDP flows are refused (they need datagrams).</param>
    /// <param name="streamId">The stream's QUIC stream id, which names a UDP flow's datagrams.</param>
    public async Task HandleAsync(
        Stream stream, Func<Stream, ValueTask> completeWrites, string clientIdentity, AccessTable access, CancellationToken cancellationToken,
        Action<FlowHeader>? admitted = null, UdpDatagramMux? datagrams = null, long streamId = 0, Action<IPAddress>? dialled = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(completeWrites);
        ArgumentNullException.ThrowIfNull(clientIdentity);
        ArgumentNullException.ThrowIfNull(access);
        await using var owned = stream;
        Socket? socket = null;
        var destination = "(no header yet)";
        try
        {
            var header = await ReadHeaderAsync(stream, completeWrites, clientIdentity, cancellationToken);
            if (header is null)
            {
                return;
            }
            destination = header.ToString();
            if (header.Protocol == FlowProtocol.Udp)
            {
                if (datagrams is null)
                {
                    await RefuseAsync(stream, completeWrites, clientIdentity, destination, "udp", FlowStatus.ProtocolError,
                        "UDP flows ride datagrams, and this connection carries none: open UDP flows on a QUIC connection to the connector", cancellationToken);
                    return;
                }
                await HandleUdpAsync(stream, completeWrites, clientIdentity, access, header, datagrams, streamId, admitted, dialled, cancellationToken);
                return;
            }
            var decision = access.Check(clientIdentity, header.Protocol, header.Host, header.Port);
            if (!decision.IsAllowed)
            {
                await RefuseAsync(stream, completeWrites, clientIdentity, destination, "tcp", decision.Status, decision.Message, cancellationToken);
                return;
            }
            admitted?.Invoke(header);
            var (status, message, connected) = await ConnectAsync(header, decision, clientIdentity, access, cancellationToken);
            if (connected is null)
            {
                await RefuseAsync(stream, completeWrites, clientIdentity, destination, "tcp", status, message, cancellationToken);
                return;
            }
            socket = connected;
            Log.FlowConnected(_logger, clientIdentity, destination, socket.RemoteEndPoint?.ToString() ?? "?");
            if (socket.RemoteEndPoint is IPEndPoint dialledTo)
            {
                dialled?.Invoke(dialledTo.Address);
            }
            await new FlowReply(FlowStatus.Ok, message).WriteAsync(stream, cancellationToken);
            ConnectorMetrics.Flow("tcp", FlowStatus.Ok);

            var upstream = new NetworkStream(socket, ownsSocket: true);
            await using (upstream)
            {
                var result = await FlowCopier.CopyAsync(stream, completeWrites, upstream, FlowCopier.ShutdownSocketSend, cancellationToken);
                ConnectorMetrics.BytesMoved(result.BytesToUpstream, result.BytesToClient);
                if (result.Error == FlowCopyError.Canceled)
                {
                    Log.FlowRevoked(_logger, clientIdentity, destination, result.BytesToUpstream, result.BytesToClient);
                }
                else
                {
                    Log.FlowClosed(_logger, clientIdentity, destination, result.Error, result.BytesToUpstream, result.BytesToClient, result.Exception?.Message ?? "");
                }
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            Log.FlowRevoked(_logger, clientIdentity, destination, 0, 0);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            Log.FlowBroken(_logger, clientIdentity, destination, e.Message);
        }
        finally
        {
            socket?.Dispose();
        }
    }

    private async Task<FlowHeader?> ReadHeaderAsync(Stream stream, Func<Stream, ValueTask> completeWrites, string clientIdentity, CancellationToken cancellationToken)
    {
        using var headerTimeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        headerTimeout.CancelAfter(_options.HeaderTimeout);
        string problem;
        try
        {
            return await FlowHeader.ReadAsync(stream, headerTimeout.Token);
        }
        catch (FlowProtocolException e)
        {
            problem = e.Message;
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            problem = $"no complete flow header arrived within {_options.HeaderTimeout.TotalSeconds:0.#} s";
        }
        Log.BadHeader(_logger, clientIdentity, problem);
        ConnectorMetrics.Flow("unknown", FlowStatus.ProtocolError);
        await TryReplyAsync(stream, completeWrites, new FlowReply(FlowStatus.ProtocolError, problem), cancellationToken);
        return null;
    }

    private async Task RefuseAsync(Stream stream, Func<Stream, ValueTask> completeWrites, string clientIdentity, string destination, string protocol, FlowStatus status, string message, CancellationToken cancellationToken)
    {
        ConnectorMetrics.Flow(protocol, status);
        Log.FlowRefused(_logger, clientIdentity, destination, status, message);
        await TryReplyAsync(stream, completeWrites, new FlowReply(status, message), cancellationToken);
    }

    // Ends the stream gracefully after the reply: disposing it without completing writes is an abort, which may discard the reply unread.
    private static async Task TryReplyAsync(Stream stream, Func<Stream, ValueTask> completeWrites, FlowReply reply, CancellationToken cancellationToken)
    {
        try
        {
            await reply.WriteAsync(stream, cancellationToken);
            await completeWrites(stream);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
        {
            // The client is gone; nothing is left to tell it.
        }
    }

    private async Task<(FlowStatus Status, string Message, Socket? Socket)> ConnectAsync(
        FlowHeader header, AccessDecision decision, string clientIdentity, AccessTable access, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(_options.ConnectTimeout);
        var seconds = $"{_options.ConnectTimeout.TotalSeconds:0.###} s";

        var (resolvedStatus, resolvedMessage, resolved) = await ResolveAsync(header, decision, clientIdentity, access, timeout.Token, cancellationToken);
        if (resolved is null)
        {
            return (resolvedStatus, resolvedMessage, null);
        }
        var addresses = resolved;

        var tried = new List<string>();
        SocketError lastError = SocketError.HostUnreachable;
        foreach (var candidate in addresses.Take(Math.Max(1, _options.MaxAddressesTried)))
        {
            // An IPv4-mapped IPv6 address would need a dual-mode socket; dial it as the IPv4 address it is.
            var address = candidate.IsIPv4MappedToIPv6 ? candidate.MapToIPv4() : candidate;
            var endpoint = new IPEndPoint(address, header.Port);
            var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                await socket.ConnectAsync(endpoint, timeout.Token);
                var via = FlowHeader.TryGetAddress(header.Host, out _) ? "" : $" ({endpoint})";
                return (FlowStatus.Ok, $"connected to {FlowHeader.FormatHostPort(header.Host, header.Port)}{via}", socket);
            }
            catch (SocketException e)
            {
                socket.Dispose();
                lastError = e.SocketErrorCode;
                tried.Add($"{endpoint}: {SocketErrors.Describe(e.SocketErrorCode)}");
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                socket.Dispose();
                return (FlowStatus.Timeout, $"connecting to {endpoint} took longer than {seconds}", null);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }
        var what = string.Join("; ", tried);
        return lastError switch
        {
            SocketError.ConnectionRefused => (FlowStatus.Refused, $"connection refused: {what} (nothing listens there, or a firewall rejects it)", null),
            SocketError.TimedOut => (FlowStatus.Timeout, $"connection timed out: {what}", null),
            _ => (FlowStatus.Unreachable, $"destination unreachable from the connector: {what}", null),
        };
    }

    /// <summary>
    /// The addresses a flow may be dialled at: an IP literal as it is, a name resolved on the connector and filtered through the access
    /// table (a name must not lead to loopback or metadata addresses its resource does not cover). Null addresses come with the refusal.
    /// </summary>
    private async Task<(FlowStatus Status, string Message, IReadOnlyList<IPAddress>? Addresses)> ResolveAsync(
        FlowHeader header, AccessDecision decision, string clientIdentity, AccessTable access, CancellationToken timeout, CancellationToken cancellationToken)
    {
        if (FlowHeader.TryGetAddress(header.Host, out var literal))
        {
            return (FlowStatus.Ok, "", [literal]);
        }
        NameResolution resolution;
        try
        {
            resolution = await _resolver.ResolveAsync(header.Host, timeout);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return (FlowStatus.Timeout, $"resolving '{header.Host}' on the connector took longer than {_options.ConnectTimeout.TotalSeconds:0.###} s", null);
        }
        if (!resolution.IsFound)
        {
            var status = resolution.Status == FlowStatus.Ok ? FlowStatus.NameNotFound : resolution.Status;
            return (status, resolution.Message.Length > 0 ? resolution.Message : $"'{header.Host}' has no addresses", null);
        }
        var allowed = new List<IPAddress>();
        AccessDecision? refusal = null;
        foreach (var address in resolution.Addresses)
        {
            var check = access.CheckResolved(clientIdentity, header.Protocol, decision.Resource!, header.Host, address, header.Port);
            if (check.IsAllowed)
            {
                allowed.Add(address);
            }
            else
            {
                refusal ??= check;
            }
        }
        if (allowed.Count == 0)
        {
            return (refusal!.Status, refusal.Message, null);
        }
        return (FlowStatus.Ok, "", allowed);
    }
}
