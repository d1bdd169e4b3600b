"""Search efficiency: ASHA + TPE against FIFO random, and the constant liar's spread."""
