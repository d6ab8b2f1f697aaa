using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Ferry.Core.Flows;

namespace Ferry.Connector.Flows;

public sealed partial class FlowHandler
{
    /// <summary>
    /// A UDP flow (see <see cref="UdpFlowFraming"/>): the same policy check and resolution as TCP, then a connected UDP socket to the
    /// destination and payloads relayed both ways until the client closes the stream, no packet moves for the idle timeout, the
    /// destination socket fails, or <paramref name="cancellationToken"/> fires (revocation). The client is told why in a close record.
    /// </summary>
    private async Task HandleUdpAsync(
        Stream stream, Func<Stream, ValueTask> completeWrites, string clientIdentity, AccessTable access, FlowHeader header,
        UdpDatagramMux datagrams, long streamId, Action<FlowHeader>? admitted, Action<IPAddress>? dialled, CancellationToken cancellationToken)
    {
        var destination = header.ToString();
        var decision = access.Check(clientIdentity, header.Protocol, header.Host, header.Port);
        if (!decision.IsAllowed)
        {
            await RefuseAsync(stream, completeWrites, clientIdentity, destination, "udp", decision.Status, decision.Message, cancellationToken);
            return;
        }
        admitted?.Invoke(header);
        var (status, message, socket) = await OpenUdpSocketAsync(header, decision, clientIdentity, access, cancellationToken);
        if (socket is null)
        {
            await RefuseAsync(stream, completeWrites, clientIdentity, destination, "udp", status, message, cancellationToken);
            return;
        }
        using (socket)
        {
            var flow = await datagrams.AcceptAsync(streamId, stream, completeWrites, new FlowReply(FlowStatus.Ok, message), cancellationToken);
            ConnectorMetrics.Flow("udp", FlowStatus.Ok);
            await using (flow)
            {
                Log.UdpFlowOpened(_logger, clientIdentity, destination, socket.RemoteEndPoint?.ToString() ?? "?");
                if (socket.RemoteEndPoint is IPEndPoint dialledTo)
                {
                    dialled?.Invoke(dialledTo.Address);
                }
                var socketErrors = new StrongBox<long>();
                var end = await RelayUdpAsync(flow, socket, socketErrors, cancellationToken);
                var counters = flow.Counters;
                // Payloads from the client went on to the resource; those sent to the client came from it.
                ConnectorMetrics.BytesMoved(counters.BytesReceived, counters.BytesSent);
                Log.UdpFlowClosed(_logger, clientIdentity, destination, end.ToString(), counters.PacketsReceived, counters.BytesReceived, counters.PacketsSent, counters.BytesSent,
                    counters.SentOnStream + counters.ReceivedOnStream, counters.Dropped, socketErrors.Value);
            }
        }
    }

    private async Task<UdpFlowEnd> RelayUdpAsync(UdpFlowChannel flow, Socket socket, StrongBox<long> socketErrors, CancellationToken cancellationToken)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var up = UdpFlowDelivery.DeliverAllAsync(flow, (payload, ct) => SendToDestinationAsync(socket, payload, ct), socketErrors, stop.Token);
        var down = FromDestinationAsync(socket, flow, socketErrors, stop.Token);
        var idle = flow.WaitForIdleAsync(_options.UdpIdleTimeout, stop.Token);
        await Task.WhenAny(up, down, idle, flow.Ended);

        FlowReply reason;
        if (cancellationToken.IsCancellationRequested)
        {
            reason = new FlowReply(FlowStatus.Denied, "the connector ended the flow: access to its destination was revoked, or the connector is stopping");
        }
        else if (flow.Ended.IsCompleted)
        {
            reason = new FlowReply(FlowStatus.Ok, "closed");
        }
        else if (down.IsCompletedSuccessfully && down.Result is { } failure)
        {
            reason = new FlowReply(FlowStatus.Unreachable, failure);
        }
        else if (idle.IsCompletedSuccessfully)
        {
            reason = new FlowReply(FlowStatus.Timeout,
                $"no packets either way for {_options.UdpIdleTimeout.TotalSeconds:0.###} s: the connector ended the idle flow; sending again opens a new one");
        }
        else
        {
            reason = new FlowReply(FlowStatus.Ok, "closed");
        }
        await flow.CloseAsync(reason, CancellationToken.None);
        await stop.CancelAsync();
        await Task.WhenAll(up, down, idle).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        return await flow.Ended;
    }

    private static async ValueTask SendToDestinationAsync(Socket socket, ReadOnlyMemory<byte> payload, CancellationToken ct)
        => await socket.SendAsync(payload, SocketFlags.None, ct);

    // Null when the flow ended or was stopped; the reason when the destination socket failed for good.
    private static async Task<string?> FromDestinationAsync(Socket socket, UdpFlowChannel flow, StrongBox<long> socketErrors, CancellationToken cancellationToken)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(UdpFlowFraming.MaxPayloadLength);
        try
        {
            while (true)
            {
                int length;
                try
                {
                    length = await socket.ReceiveAsync(buffer.AsMemory(0, UdpFlowFraming.MaxPayloadLength), SocketFlags.None, cancellationToken);
                }
                catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionRefused or SocketError.ConnectionReset or SocketError.HostUnreachable
                    or SocketError.NetworkUnreachable or SocketError.MessageSize)
                {
                    // ICMP "port unreachable" and the like report one lost packet each; the destination may come back, as with any UDP peer.
                    Interlocked.Increment(ref socketErrors.Value);
                    continue;
                }
                catch (SocketException e)
                {
                    return $"the connector's UDP socket to {socket.RemoteEndPoint} failed: {SocketErrors.Describe(e.SocketErrorCode)}";
                }
                if (!await flow.SendAsync(buffer.AsMemory(0, length), cancellationToken))
                {
                    return null;
                }
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return null;
        }
        catch (ObjectDisposedException)
        {
            return null;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private async Task<(FlowStatus Status, string Message, Socket? Socket)> OpenUdpSocketAsync(
        FlowHeader header, AccessDecision decision, string clientIdentity, AccessTable access, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(_options.ConnectTimeout);
        var (status, message, addresses) = await ResolveAsync(header, decision, clientIdentity, access, timeout.Token, cancellationToken);
        if (addresses is null)
        {
            return (status, message, null);
        }
        var tried = new List<string>();
        foreach (var candidate in addresses.Take(Math.Max(1, _options.MaxAddressesTried)))
        {
            // An IPv4-mapped IPv6 address would need a dual-mode socket; use it as the IPv4 address it is.
            var address = candidate.IsIPv4MappedToIPv6 ? candidate.MapToIPv4() : candidate;
            var endpoint = new IPEndPoint(address, header.Port);
            var socket = new Socket(address.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
            try
            {
                // Connecting a UDP socket sends nothing: it picks the route and source address, and filters replies to the destination's.
                await socket.ConnectAsync(endpoint, timeout.Token);
                var via = FlowHeader.TryGetAddress(header.Host, out _) ? "" : $" ({endpoint})";
                return (FlowStatus.Ok, $"UDP to {FlowHeader.FormatHostPort(header.Host, header.Port)}{via}", socket);
            }
            catch (SocketException e)
            {
                socket.Dispose();
                tried.Add($"{endpoint}: {SocketErrors.Describe(e.SocketErrorCode)}");
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }
        return (FlowStatus.Unreachable, $"destination unreachable from the connector: {string.Join("; ", tried)}", null);
    }
}
