using System.Net;
using System.Net.Sockets;

namespace Ferry.Stun;

/// <summary>Sends one datagram for a <see cref="StunClient"/> through a socket its owner controls.</summary>
public delegate ValueTask StunSendAsync(ReadOnlyMemory<byte> datagram, IPEndPoint destination, CancellationToken cancellationToken);

/// <summary>Retransmission settings of a <see cref="StunClient"/> (RFC 8489 section 6.2.1).</summary>
public sealed class StunClientOptions
{
    /// <summary>The first retransmission timeout (RTO); it doubles after each transmission.</summary>
    public TimeSpan InitialRto { get; set; } = TimeSpan.FromMilliseconds(500);

    /// <summary>Rc: how many times the request is sent at most.</summary>
    public int MaxTransmissions { get; set; } = 7;

    /// <summary>Rm: after the last transmission, wait this many initial RTOs before giving up.</summary>
    public int FinalWaitMultiplier { get; set; } = 16;

    /// <summary>SOFTWARE to put in requests; null sends none.</summary>
    public string? Software { get; set; }

    internal void Validate()
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(InitialRto, TimeSpan.Zero, nameof(InitialRto));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxTransmissions, nameof(MaxTransmissions));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(FinalWaitMultiplier, nameof(FinalWaitMultiplier));
    }
}

/// <summary>How a Binding transaction ended.</summary>
public enum StunBindingStatus
{
    /// <summary>The server answered with the mapped address.</summary>
    Success,

    /// <summary>No answer after every retransmission.</summary>
    Timeout,

    /// <summary>The server answered with ERROR-CODE.</summary>
    ErrorResponse,

    /// <summary>The server answered with something unusable (no address, unknown required attributes).</summary>
    InvalidResponse,

    /// <summary>The request could not be sent.</summary>
    SendFailed,
}

/// <summary>The outcome of one Binding request to one STUN server.</summary>
public sealed record StunBindingResult
{
    /// <summary>How the transaction ended.</summary>
    public required StunBindingStatus Status { get; init; }

    /// <summary>The server that was asked (and, on any response, answered).</summary>
    public required IPEndPoint Server { get; init; }

    /// <summary>The reflexive address the server saw, on success.</summary>
    public IPEndPoint? MappedAddress { get; init; }

    /// <summary>Time from the last transmission to the response; zero without a response.</summary>
    public TimeSpan RoundTripTime { get; init; }

    /// <summary>How many times the request was sent.</summary>
    public int Transmissions { get; init; }

    /// <summary>The STUN error code of an error response (for example 420), else 0.</summary>
    public int ErrorCode { get; init; }

    /// <summary>Why it failed, in words: the server's reason phrase, or ours.</summary>
    public string? ErrorReason { get; init; }

    /// <summary>The socket error when sending failed.</summary>
    public SocketError SocketError { get; init; }

    /// <summary>Whether a mapped address was learned.</summary>
    public bool IsSuccess => Status == StunBindingStatus.Success;

    /// <inheritdoc/>
    public override string ToString() => Status switch
    {
        StunBindingStatus.Success => $"{Server}: {MappedAddress} in {RoundTripTime.TotalMilliseconds:0.#} ms",
        StunBindingStatus.ErrorResponse => $"{Server}: error {ErrorCode} {ErrorReason}",
        StunBindingStatus.SendFailed => $"{Server}: send failed ({SocketError})",
        _ => $"{Server}: {Status} {ErrorReason}",
    };
}
