namespace Ferry.Core.Flows;

/// <summary>An open UDP flow as its user sees it: payloads in, payloads out, unreliable and unordered like UDP itself.</summary>
public interface IUdpFlow : IAsyncDisposable
{
    /// <summary>Sends one payload (at most <see cref="UdpFlowFraming.MaxPayloadLength"/> bytes); false when the flow has ended and the payload was dropped.</summary>
    ValueTask<bool> SendAsync(ReadOnlyMemory<byte> payload, CancellationToken cancellationToken);

    /// <summary>
    /// Waits for the next payload and copies it into <paramref name="buffer"/>, which must hold <see cref="UdpFlowFraming.MaxPayloadLength"/>
    /// bytes; returns its length (0 is a valid, empty payload), or -1 once the flow has ended (see <see cref="Ended"/>).
    /// </summary>
    ValueTask<int> ReceiveAsync(Memory<byte> buffer, CancellationToken cancellationToken);

    /// <summary>Completes when the flow ends, with who ended it and why.</summary>
    Task<UdpFlowEnd> Ended { get; }

    /// <summary>Packets and bytes carried so far.</summary>
    UdpFlowCounters Counters { get; }

    /// <summary>How long since a payload last went either way.</summary>
    TimeSpan Idle { get; }
}

/// <summary>Why a UDP flow ended: <see cref="FlowStatus.Ok"/> for a plain close, otherwise the reason's status; and whether the peer ended it.</summary>
public sealed record UdpFlowEnd(bool ByPeer, FlowStatus Status, string Reason)
{
    public override string ToString() => $"{(ByPeer ? "by the peer" : "here")}: {(Status == FlowStatus.Ok ? "" : $"{Status}, ")}{Reason}";
}

/// <summary>What a UDP flow carried: packets and bytes each way, how many of them rode the stream instead of datagrams, and how many were dropped.</summary>
public readonly record struct UdpFlowCounters(long PacketsSent, long BytesSent, long PacketsReceived, long BytesReceived, long SentOnStream, long ReceivedOnStream, long Dropped)
{
    public override string ToString()
        => $"{PacketsSent} packets ({BytesSent} bytes) sent, {PacketsReceived} packets ({BytesReceived} bytes) received, "
            + $"{SentOnStream + ReceivedOnStream} over the stream, {Dropped} dropped";
}

/// <summary>What both ends of a UDP flow do with what arrives on it.</summary>
public static class UdpFlowDelivery
{
    /// <summary>
    /// Hands every payload the flow receives to <paramref name="deliver"/> until the flow ends or <paramref name="cancellationToken"/>
    /// is cancelled. A payload the local socket refuses (an ICMP error left from an earlier packet, a full or closed socket, a size
    /// the path cannot take) is lost as UDP loses packets, counted in <paramref name="socketErrors"/>, and the flow goes on.
    /// </summary>
    public static async Task DeliverAllAsync(IUdpFlow flow, Func<ReadOnlyMemory<byte>, CancellationToken, ValueTask> deliver, System.Runtime.CompilerServices.StrongBox<long>? socketErrors, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(flow);
        ArgumentNullException.ThrowIfNull(deliver);
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(UdpFlowFraming.MaxPayloadLength);
        try
        {
            while (true)
            {
                var length = await flow.ReceiveAsync(buffer, cancellationToken).ConfigureAwait(false);
                if (length < 0)
                {
                    return;
                }
                try
                {
                    await deliver(buffer.AsMemory(0, length), cancellationToken).ConfigureAwait(false);
                }
                catch (System.Net.Sockets.SocketException)
                {
                    if (socketErrors is not null)
                    {
                        Interlocked.Increment(ref socketErrors.Value);
                    }
                }
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
