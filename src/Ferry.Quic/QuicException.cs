namespace Ferry.Quic;

/// <summary>What went wrong in a QUIC operation.</summary>
public enum QuicError
{
    /// <summary>An unexpected failure inside the stack.</summary>
    InternalError,

    /// <summary>The peer closed the connection (see ApplicationErrorCode / TransportErrorCode).</summary>
    ConnectionAborted,

    /// <summary>The connection was closed locally.</summary>
    OperationAborted,

    /// <summary>The peer reset or stopped the stream (see ApplicationErrorCode).</summary>
    StreamAborted,

    /// <summary>No packets arrived within the idle timeout.</summary>
    ConnectionIdle,

    /// <summary>The handshake did not finish in time.</summary>
    ConnectionTimeout,

    /// <summary>The QUIC protocol was violated (see TransportErrorCode).</summary>
    TransportError,
}

/// <summary>A QUIC connection or stream failed.</summary>
public sealed class QuicException : IOException
{
    /// <summary>Creates the exception.</summary>
    public QuicException(QuicError error, string message, long? applicationErrorCode = null, long? transportErrorCode = null, Exception? inner = null)
        : base(message, inner)
    {
        Error = error;
        ApplicationErrorCode = applicationErrorCode;
        TransportErrorCode = transportErrorCode;
    }

    /// <summary>The kind of failure.</summary>
    public QuicError Error { get; }

    /// <summary>The application error code sent by the peer, if any.</summary>
    public long? ApplicationErrorCode { get; }

    /// <summary>The QUIC transport error code, if any.</summary>
    public long? TransportErrorCode { get; }
}
