using System.Buffers.Binary;
using System.Security.Cryptography;

namespace Ferry.Stun;

/// <summary>A 96-bit STUN transaction id, usable as a dictionary key without allocation.</summary>
public readonly record struct StunTransactionId(ulong High, uint Low)
{
    /// <summary>A fresh id from the cryptographic random source, as RFC 8489 asks.</summary>
    public static StunTransactionId NewRandom()
    {
        Span<byte> bytes = stackalloc byte[StunConstants.TransactionIdLength];
        RandomNumberGenerator.Fill(bytes);
        return Read(bytes);
    }

    /// <summary>Reads an id from its 12 wire bytes.</summary>
    public static StunTransactionId Read(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length < StunConstants.TransactionIdLength)
        {
            throw new ArgumentException("A transaction id is 12 bytes.", nameof(bytes));
        }

        return new StunTransactionId(BinaryPrimitives.ReadUInt64BigEndian(bytes), BinaryPrimitives.ReadUInt32BigEndian(bytes[8..]));
    }

    /// <summary>Writes the 12 wire bytes.</summary>
    public void WriteTo(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt64BigEndian(destination, High);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], Low);
    }

    /// <inheritdoc/>
    public override string ToString() => $"{High:x16}{Low:x8}";
}
