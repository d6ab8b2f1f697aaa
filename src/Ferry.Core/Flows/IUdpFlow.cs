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
