using System.Buffers.Binary;

namespace Ferry.Quic.Tests;

/// <summary>A long, position-dependent byte sequence generated on demand, so gigabytes can be sent and checked without holding them.</summary>
internal sealed class DeterministicData
{
    /// <summary>Offsets and lengths passed to <see cref="Fill"/> must be multiples of this.</summary>
    public const int Alignment = 4096;

    // A period that is not a power of two, so the pattern never lines up with chunk, packet or window boundaries.
    private const int Period = (1 << 20) + 7;
    private readonly byte[] _base;

    public DeterministicData(int seed)
    {
        _base = new byte[Period];
        new Random(seed).NextBytes(_base);
    }

    /// <summary>Writes the bytes at <paramref name="position"/> into <paramref name="destination"/>.</summary>
    public void Fill(Span<byte> destination, long position)
    {
        if (position % Alignment != 0 || destination.Length % Alignment != 0)
        {
            throw new ArgumentException("position and length must be multiples of 4096");
        }

        int offset = (int)(position % Period);
        for (int done = 0; done < destination.Length; )
        {
            int n = Math.Min(destination.Length - done, Period - offset);
            _base.AsSpan(offset, n).CopyTo(destination[done..]);
            done += n;
            offset = 0;
        }

        // Every 4 KiB page starts with its own absolute offset, so a duplicated or skipped page of the period cannot hash equal.
        for (int page = 0; page < destination.Length; page += Alignment)
        {
            BinaryPrimitives.WriteInt64LittleEndian(destination[page..], position + page);
        }
    }
}
